"""Property-based tests: any input, target or parameter value gives a finite map of the
documented shape or an xvit error, never another exception, and never a changed model.

Strategies are derived from each registered method's own defaults, so a new method or
parameter is covered without editing this file.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import xvit
from conftest import MODEL_FACTORIES, NUM_CLASSES
from model_state import snapshot

METHODS = xvit.list_methods()


@functools.cache
def tiny_model(name: str) -> torch.nn.Module:
    """One model per factory for the whole module (each example checks it is unchanged)."""
    return MODEL_FACTORIES[name]()


def values_for(name: str, default: Any) -> st.SearchStrategy[Any]:
    """Plausible and implausible values for a parameter, judged from its name and default.

    Counts stay small to keep examples quick. Flags are drawn off or invalid, never on: a
    flag may switch on something slow (``compile``).
    """
    odd = st.sampled_from([None, "x", -1, 2.5, float("nan"), True])

    def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
        return st.one_of(valid, valid, valid, invalid, odd)

    if name == "batch_size":
        return mostly(st.one_of(st.integers(1, 70), st.just("auto")), st.integers(-2, 0))
    if name == "seed":
        return mostly(st.integers(0, 2**32), st.integers(-3, -1))
    if isinstance(default, bool):
        return mostly(st.just(False), st.sampled_from([0, 1, "yes"]))
    if isinstance(default, int):
        return mostly(st.integers(1, 12), st.integers(-2, 0))
    if isinstance(default, float):
        return mostly(
            st.floats(0.0, 1.0),
            st.one_of(st.floats(-0.5, 2.5), st.sampled_from([float("inf"), -float("inf")])),
        )
    if isinstance(default, str):
        return mostly(
            st.sampled_from([default, "max", "min", "bf16", "all", "mean"]),
            st.text(max_size=4),
        )
    if default is None:  # a selection of blocks or a layer, checked against the model
        return mostly(
            st.one_of(st.none(), st.integers(-2, 1), st.lists(st.integers(-2, 1), max_size=2)),
            st.one_of(st.integers(-9, 9), st.sampled_from(["all", "bogus", ()])),
        )
    return mostly(st.just(default), odd)


@st.composite
def method_params(draw: st.DrawFn, method: str) -> dict[str, Any]:
    """The method's cheap parameters, some of them replaced by drawn values."""
    cls = xvit.get_method(method)
    params = dict(cls.quick_params)
    if cls.randomized:
        params["seed"] = 0
    for name, default in cls.defaults().items():
        if draw(st.integers(0, 3)) == 0:  # a quarter of them, so that some calls succeed
            params[name] = draw(values_for(name, default))
    return params


@st.composite
def inputs(draw: st.DrawFn, model_name: str) -> torch.Tensor:
    """A batch of 1-3 images, usually of the model's shape, sometimes not."""
    geo = xvit.get_adapter(tiny_model(model_name)).geometry
    b = draw(st.integers(1, 3))
    c, (h, w) = geo.in_chans, geo.image_size
    shape = draw(
        st.sampled_from(
            [(b, c, h, w)] * 6
            + [(b, 1, h, w), (b, c, h + geo.patch_size[0], w), (c, h, w), (0, c, h, w)]
        )
    )
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0]))
    x = torch.randn(shape, generator=g) * scale
    return x.to(draw(st.sampled_from([torch.float32, torch.float64])))


def targets(batch: int) -> st.SearchStrategy[Any]:
    """Mostly valid targets (None, a class, one class per image), sometimes not."""
    valid = st.integers(0, NUM_CLASSES - 1)
    return st.one_of(
        st.none(),
        valid,
        st.lists(valid, min_size=batch, max_size=batch),
        st.just(torch.arange(batch) % NUM_CLASSES),
        st.integers(-2, NUM_CLASSES + 1),
        st.lists(valid, min_size=max(batch - 1, 0), max_size=batch + 1),
        st.floats(0, 3),
    )


@pytest.mark.parametrize("method", METHODS)
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_call_gives_a_finite_map_or_an_xvit_error(method: str, data: st.DataObject) -> None:
    model_name = data.draw(st.sampled_from(sorted(MODEL_FACTORIES)), label="model")
    model = tiny_model(model_name)
    x = data.draw(inputs(model_name), label="inputs")
    target = data.draw(targets(int(x.shape[0]) if x.dim() == 4 else 1), label="target")
    params = data.draw(method_params(method), label="params")
    before = snapshot(model)
    try:
        result = xvit.explain(method, model, x, target=target, **params)
    except xvit.XvitError as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(exc) and "\n" not in str(exc).strip(), "an xvit error is one line"
    else:
        event("explained")
        geo = xvit.get_adapter(model).geometry
        h, w = int(x.shape[-2]), int(x.shape[-1])
        assert result.map.shape[0] == x.shape[0]
        assert tuple(result.map.shape[1:]) in (geo.grid(h, w), (h, w))
        assert torch.isfinite(result.map).all()
        assert result.targets.shape == (x.shape[0],)
        assert all(0 <= int(t) < NUM_CLASSES for t in result.targets)
        assert all(math.isfinite(float(p)) and 0 <= float(p) <= 1 for p in result.probabilities)
    assert snapshot(model) == before
