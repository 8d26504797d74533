"""Every registered method on every adapter, and every registered metric: shape,
finiteness, device, batch equivalence, and the model left exactly as it was. Generated from
the registries, so no method or metric escapes."""

from __future__ import annotations

import pytest
import torch

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.metrics import get_metric, list_metrics

METHODS = xvit.list_methods()
METRICS = list_metrics()


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method: str, model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    cls = xvit.get_method(method)
    params = dict(cls.quick_params)
    if cls.randomized:
        params["seed"] = 0
    x = model_input(model, batch=2)
    before = snapshot(model)

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


@pytest.mark.parametrize("metric", METRICS)
def test_metric_contract(metric: str) -> None:
    model = MODEL_FACTORIES["timm-vit-rect"]()  # 24 x 40 input: height and width differ
    cls = get_metric(metric)
    x = model_input(model, batch=2)
    h, w = x.shape[-2:]
    maps = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(0))
    boxes = [[(0, 0, w / 2, h / 2)], [(w / 4, h / 4, w, h)]] if cls.needs_boxes else None
    before = snapshot(model)

    result = cls()(model, x, [1, 2], maps, boxes, seeds=[3, 4])

    assert snapshot(model) == before, "the model was modified by the call"
    assert result.metric == metric
    assert result.scores.shape == (2,) and result.scores.dtype == torch.float64
    assert result.scores.device.type == "cpu"
    assert (result.curves is not None) == cls.curve == (result.fractions is not None)
    # batch equivalence: each image alone scores as in the batch
    one = cls()(model, x[1:], [2], maps[1:], boxes[1:] if boxes else None, seeds=[4])
    torch.testing.assert_close(one.scores[0], result.scores[1], rtol=1e-5, atol=1e-6)
    # the checks of Metric.__call__ apply to every metric
    with pytest.raises(xvit.InvalidInputError, match="saliency maps for 2 images"):
        cls()(model, x, [1, 2], maps[:1], boxes)
    if cls.needs_boxes:
        with pytest.raises(xvit.InvalidInputError, match="needs ground truth"):
            cls()(model, x, [1, 2], maps)
