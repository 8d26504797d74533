"""TIS equals the authors' computation (aenglebert/Transformer_Input_Sampling, tis/tis.py with
fast_pytorch_kmeans 0.1.6), re-implemented here as they wrote it: one image at a time,
forward hooks on every block and on ``pos_drop``, k-means from given start points, masks by
``topk``, the kept tokens in the centroid's order, scores in batches of 128, the
coverage-corrected sum and the min-max scaling. Both sides get the same k-means start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.data import get_dataset
from xvit.methods._scoring import score_masks
from xvit.methods.tis import TIS
from xvit.models import TokenSubset, hook_counts


# --- the authors' computation, one image at a time ------------------------------------------
def reference_activations(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(features, tokens): every block's output concatenated, CLS row dropped, transposed."""
    outputs: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
        for b in model.blocks
    ]
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        for h in handles:
            h.remove()
    return torch.cat(outputs, dim=-1)[0][1:].T


def reference_kmeans(data: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """fast_pytorch_kmeans 0.1.6, full batch, euclidean, max_iter 100, tol 1e-4."""
    centroids = data[start].clone()
    k = len(start)
    for _ in range(100):
        sim = 2 * data @ centroids.transpose(0, 1)
        sim = sim - (data**2).sum(dim=1)[:, None] - (centroids**2).sum(dim=1)[None, :]
        nearest = sim.max(dim=-1)[1]
        onehot = (nearest[None, :] == torch.arange(k)[:, None]).float()
        grad = onehot @ data / onehot.sum(-1)[:, None]
        grad[grad != grad] = 0
        err = (grad - centroids).pow(2).sum()
        centroids = centroids * 0 + grad
        if err <= 1e-4:
            break
    return centroids


def reference_tis(
    model: nn.Module, image: torch.Tensor, label: int, start: torch.Tensor, ratio: float = 0.5
) -> torch.Tensor:
    centroids = reference_kmeans(reference_activations(model, image), start)
    kept_lists, binaries = [], []
    for raw in centroids:
        idx = raw.topk(int(ratio * raw.flatten().shape[0]))[1]
        binary = torch.zeros_like(raw)
        binary[idx] = 1
        kept_lists.append(idx)
        binaries.append(binary)
    current: list[list[torch.Tensor] | None] = [None]

    def sample_tokens(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor | None:
        if current[0] is None:
            return None
        cls, rest = out[:, 0:1], out[:, 1:]
        return torch.cat([torch.cat([cls, rest[:, idx]], dim=1) for idx in current[0]])

    handle = model.pos_drop.register_forward_hook(sample_tokens)
    scores = []
    try:
        with torch.no_grad():
            for start_row in range(0, len(kept_lists), 128):
                current[0] = kept_lists[start_row : start_row + 128]
                probs = torch.softmax(model(image[None]), dim=1)
                scores.append(probs[:, label])
    finally:
        handle.remove()
    weights = torch.cat(scores)
    masks = torch.vstack(binaries).T  # tokens x K
    saliency = (weights * masks).sum(-1) / masks.sum(-1)
    ph, pw = model.patch_embed.patch_size
    saliency = saliency.reshape(image.shape[-2] // ph, image.shape[-1] // pw)
    saliency = saliency - saliency.min()
    return saliency / saliency.max()


def _digits(n: int) -> tuple[nn.Module, torch.Tensor]:
    model = xvit.load_model("xvit:digits-vit")
    pre = xvit.get_adapter(model).preprocessing
    data = get_dataset("digits", split="test", n=n)
    return model, torch.stack([pre(data[i].image) for i in range(n)])


@pytest.mark.parametrize(
    ("which", "num_masks"), [("digits", 48), ("timm-vit", 24), ("timm-vit", 96)]
)
def test_tis_equals_the_authors_computation(which: str, num_masks: int) -> None:
    if which == "digits":
        model, x = _digits(2)
    else:
        model = MODEL_FACTORIES[which]()
        x = model_input(model, batch=2)
    target = torch.tensor([3, 1])
    method = TIS(num_masks=num_masks, seed=5)
    before = snapshot(model)
    ours = method.attribute(model, x, target)
    assert snapshot(model) == before
    features = len(model.blocks) * model.embed_dim
    start = method.start(features)
    assert len(start) == min(num_masks, features) and len(set(start.tolist())) == len(start)
    for i in range(len(x)):
        ref = reference_tis(model, x[i], int(target[i]), start)
        torch.testing.assert_close(ours[i], ref, rtol=1e-4, atol=1e-6)


def test_tis_batch_size_and_score_function_do_not_change_the_map() -> None:
    model, x = _digits(2)
    target = torch.tensor([3, 7])
    base = TIS(num_masks=20).attribute(model, x, target)
    small = TIS(num_masks=20, batch_size=7).attribute(model, x, target)
    torch.testing.assert_close(small, base, rtol=1e-5, atol=1e-6)

    def prob_of_3(z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=1)[:, 3]

    # the score function weights each subset by its score: the class-3 probability again
    scored = TIS(num_masks=20).attribute(model, x, prob_of_3)
    torch.testing.assert_close(scored[0], base[0], rtol=1e-5, atol=1e-6)


def test_tis_parameters_and_refusals() -> None:
    model = MODEL_FACTORIES["timm-vit"]()  # 3 blocks x 32 features, 4 x 4 patches
    x = model_input(model, batch=1)
    method = TIS(num_masks=1000)
    assert len(method.start(96)) == 96  # no more clusters than features
    assert method.cost(xvit.get_adapter(model).geometry, (32, 32)).forwards == 97
    assert method.attribute(model, x, torch.tensor([0])).shape == (1, 4, 4)
    with pytest.raises(xvit.ParameterError, match="keep_ratio"):
        TIS(keep_ratio=0.05).attribute(model, x, torch.tensor([0]))
    with pytest.raises(xvit.ParameterError, match="num_masks"):
        TIS(num_masks=0)
    assert TIS.capabilities_needed() == ("token_subset",)


def test_token_subset_keeps_the_named_tokens_and_leaves_no_hook() -> None:
    model = MODEL_FACTORIES["timm-vit-registers"]()  # CLS + 3 registers + 16 patches
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=2)
    hooks = hook_counts(model)
    everything = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        full = adapter.logits(x)
        with TokenSubset(adapter) as subset:
            subset.keep(everything)
            same = adapter.logits(x)
            subset.check_applied()
            subset.keep(torch.tensor([[0, 5, 9]]))  # one row given, the second reuses it
            cut = adapter.logits(x)
    torch.testing.assert_close(same, full, rtol=1e-5, atol=1e-5)
    # the reference: the model's own tokens, the prefix and patches 0, 5, 9 kept by hand
    prefix = model.num_prefix_tokens
    keep = torch.tensor([0, 5, 9]) + prefix
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        h = torch.cat([h[:, :prefix], h[:, keep]], dim=1)
        expected = model.forward_head(model.norm(model.blocks(h)))
    torch.testing.assert_close(cut, expected, rtol=1e-5, atol=1e-5)
    assert hook_counts(model) == hooks


def test_token_masks_in_the_kernel_are_checked() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    x = model_input(model, batch=1)
    uneven = torch.zeros(2, 4, 4)
    uneven[0, 0, :2] = 1
    uneven[1, 0, :3] = 1
    with pytest.raises(xvit.InvalidInputError, match="same number"):
        score_masks(xvit.get_adapter(model), x, torch.tensor([0]), uneven, token_masks=True)
    with pytest.raises(xvit.InvalidInputError, match="patch grid"):
        score_masks(
            xvit.get_adapter(model), x, torch.tensor([0]), torch.ones(1, 32, 32), token_masks=True
        )
