"""Every registered method on every adapter, and every registered metric: shape,
finiteness, device, batch equivalence, and the model left exactly as it was. Generated from
the registries, so no method or metric escapes. The families of issue 14
(tests/family_models.py) are in it too: every family is left untouched, refuses bad targets
clearly and serves two threads at once; the full method contract runs on them for a
representative subset of methods (every method already runs on every family, untouched and
on the grid, in test_families.py)."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILY_FACTORIES
from test_reliability import dirty, quick, run_together

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.metrics import get_metric, list_metrics

METHODS = xvit.list_methods()
METRICS = list_metrics()
FAMILIES = sorted(FAMILY_FACTORIES)
#: The methods given the full contract on every family, one per way of reading a model:
#: q/k/v gradients and masked scoring (gradmask), attention probabilities with gradients on
#: the eager path (gae), the forward alone (rise). All methods on all families here would add
#: about 2 minutes to the suite for code paths these three already take.
FAMILY_METHODS = ["gae", "gradmask", "rise"]


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method: str, model_name: str) -> None:
    check_method_contract(method, MODEL_FACTORIES[model_name]())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", FAMILY_METHODS)
def test_method_contract_on_families(method: str, family: str) -> None:
    check_method_contract(method, FAMILY_FACTORIES[family]())


def check_method_contract(method: str, model: torch.nn.Module) -> None:
    cls = xvit.get_method(method)
    params = dict(cls.quick_params)
    if cls.randomized:
        params["seed"] = 0
    x = model_input(model, batch=2)
    before = snapshot(model)
    if refused_clearly(cls, model, x, params):
        assert snapshot(model) == before, "the model was modified by a refused call"
        return

    result = xvit.explain(method, model, x, **params)

    assert snapshot(model) == before, "the model was modified by the call"
    assert result.map.dim() == 3 and result.map.shape[0] == 2
    assert result.map.device == x.device
    assert torch.isfinite(result.map).all()
    assert result.method == method
    geo = xvit.get_adapter(model).geometry
    assert tuple(result.map.shape[1:]) in (geo.grid(), geo.image_size)
    # batch equivalence: each image alone gives the same map as in the batch
    one = xvit.explain(method, model, x[1:2], target=result.targets[1:2], **params)
    torch.testing.assert_close(one.map[0], result.map[1], rtol=1e-4, atol=1e-5)


def refused_clearly(cls: type[xvit.Explainer], model: torch.nn.Module, x, params) -> bool:
    """True after checking the refusal when the method cannot run here (its optional extra
    is missing: a MissingDependencyError naming the install command) or cannot explain this
    model (it does not ``supports`` it: an UnsupportedModelError naming the method)."""
    if cls.unavailable_reason():
        with pytest.raises(xvit.MissingDependencyError, match=r"pip install xvit\["):
            xvit.explain(cls.name, model, x, **params)
        return True
    if not cls.supports(xvit.get_adapter(model)):
        with pytest.raises(xvit.UnsupportedModelError, match=cls.name):
            xvit.explain(cls.name, model, x, **params)
        return True
    return False


@pytest.mark.parametrize("metric", METRICS)
def test_metric_contract(metric: str) -> None:
    model = MODEL_FACTORIES["timm-vit-rect"]()  # 24 x 40 input: height and width differ
    cls = get_metric(metric)
    x = model_input(model, batch=2)
    h, w = x.shape[-2:]
    maps = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(0))
    boxes = [[(0, 0, w / 2, h / 2)], [(w / 4, h / 4, w, h)]] if cls.needs_boxes else None
    before = snapshot(model)
    # a metric that explains again gets the method that made the maps
    again = {"explainer": "rollout"} if cls.needs_explainer else {}

    result = cls()(model, x, [1, 2], maps, boxes, seeds=[3, 4], **again)

    assert snapshot(model) == before, "the model was modified by the call"
    assert result.metric == metric
    assert result.scores.shape == (2,) and result.scores.dtype == torch.float64
    assert result.scores.device.type == "cpu"
    assert cls.curve == (result.fractions is not None)  # curves over fractions of pixels
    assert result.curves is not None or not cls.curve  # others may carry curves (mprt's steps)
    # batch equivalence: each image alone scores as in the batch
    one = cls()(model, x[1:], [2], maps[1:], boxes[1:] if boxes else None, seeds=[4], **again)
    torch.testing.assert_close(one.scores[0], result.scores[1], rtol=1e-5, atol=1e-6)
    # the checks of Metric.__call__ apply to every metric
    with pytest.raises(xvit.InvalidInputError, match="saliency maps for 2 images"):
        cls()(model, x, [1, 2], maps[:1], boxes, **again)
    if cls.needs_boxes:
        with pytest.raises(xvit.InvalidInputError, match="needs ground truth"):
            cls()(model, x, [1, 2], maps)


# --- every family: untouched, bad targets refused, two threads -----------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_family_untouched_and_bad_targets_refused(family: str) -> None:
    model = FAMILY_FACTORIES[family]()
    dirty(model)  # train mode, a frozen parameter, a .grad
    x = model_input(model)
    before = snapshot(model)  # hooks, classes, modes, flags, grads, attention implementation
    xvit.explain("gradmask", model, x, batch_size=7)
    assert snapshot(model) == before
    n = xvit.get_adapter(model).num_classes
    bad = [
        (n, "out of range"),
        (-1, "out of range"),
        ([0, 1, 2], "3 targets for 2 images"),
        (1.5, "int class index"),
    ]
    # targets are resolved once for every method (Explainer.attribute): each kind of bad
    # target on one method, the family's class count on every method
    for target, message in bad:
        with pytest.raises(xvit.InvalidInputError, match=message):
            xvit.explain("gradmask", model, x, target=target)
    for method in METHODS:
        with pytest.raises(xvit.InvalidInputError, match="out of range"):
            xvit.explain(method, model, x, target=n, **quick(method))
    assert snapshot(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_family_serves_two_threads(family: str) -> None:
    """Captures of q/k/v, of probabilities on the eager path (switched for the call) and
    plain forwards on one model at once give the results of the calls made alone."""
    model = FAMILY_FACTORIES[family]()
    xa, xb = model_input(model, batch=1, seed=1), model_input(model, batch=3, seed=2)
    jobs = [
        lambda: xvit.explain("gradmask", model, xa, target=[0]).map,
        lambda: xvit.explain("gae", model, xb, target=[4, 2, 1]).map,
        lambda: xvit.explain("attention", model, xa).map,
    ]
    alone = [job() for job in jobs]
    before = snapshot(model)
    for got, want in zip(run_together(jobs), alone):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert snapshot(model) == before
