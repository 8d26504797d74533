"""Every registered method on every adapter: shape, finiteness, device, batch equivalence,
and the model left exactly as it was. Generated from the registry, so no method escapes."""

from __future__ import annotations

import pytest
import torch

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot

METHODS = xvit.list_methods()


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
