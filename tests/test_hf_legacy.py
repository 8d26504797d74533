"""The transformers 4.x module layout, proven against a real transformers 4.46.3.

transformers 4.46.3 (with the tokenizers and huggingface_hub releases it pins) is installed once
with ``pip install --target`` into the pytest cache. A subprocess with that folder first on
PYTHONPATH builds tiny 4.x ViT and DeiT-with-teacher models (layout
``encoder.layer[i].attention.attention.query``), explains them with xvit, captures their
attention, converts them with xvit's converter, and saves weights, inputs and results. This
process (transformers 5.x) loads those weights into 5.x models through a name map written
here and checks that everything agrees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xvit
from conftest import DEPTH, HEADS, HIDDEN, NUM_CLASSES

pytestmark = pytest.mark.slow

LEGACY = ("transformers==4.46.3", "tokenizers==0.20.3", "huggingface_hub==0.26.5")
UNREACHABLE = (
    "No matching distribution",
    "Could not find a version",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
)
#: model kind -> (config class, model class, image size)
KINDS = {
    "vit": ("ViTConfig", "ViTForImageClassification", [32, 32]),
    "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", [24, 40]),
}
TARGETS = [1, 3]

SCRIPT = r"""
import dataclasses, json, sys
import torch, transformers, xvit
from xvit.models import Capture

out = sys.argv[1]
kinds, base, targets = (json.loads(a) for a in sys.argv[2:5])
report = {"version": transformers.__version__, "file": transformers.__file__}
for kind, (config_name, model_name, size) in kinds.items():
    config = getattr(transformers, config_name)(**base, image_size=size)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread the weights so no mask threshold is a near tie
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    adapter = xvit.get_adapter(model)
    x = torch.randn(2, 3, *size, generator=g)
    hooks, impl = xvit.hook_counts(model), config._attn_implementation
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        own = model(pixel_values=x, output_attentions=True).attentions
        with adapter.eager_attention(), Capture(adapter, attention=True) as cap:
            adapter.forward_logits(x)
        captured = cap.attentions()
    gradmask = xvit.explain("gradmask", model, x, target=targets).map
    as_timm = xvit.hf_to_timm(model)
    back = xvit.timm_to_hf(as_timm)
    with torch.no_grad():
        timm_logits = as_timm(x)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "x": x,
            "logits": logits,
            "gradmask": gradmask,
            "captured": list(captured),
            "own": list(own),
            "timm_state_dict": as_timm.state_dict(),
            "timm_logits": timm_logits,
            "timm_gradmask": xvit.explain("gradmask", as_timm, x, target=targets).map,
            "back_state_dict": back.state_dict(),
        },
        f"{out}/{kind}.pt",
    )
    report[kind] = {
        "geometry": dataclasses.asdict(adapter.geometry),
        "hooks_unchanged": xvit.hook_counts(model) == hooks,
        "attn_impl_restored": config._attn_implementation == impl,
        "back_class": type(back).__name__,
        "timm_class": type(as_timm).__name__,
    }
print(json.dumps(report))
"""


def _install(site: Path) -> None:
    """pip install the 4.x stack into ``site``; skip the test when PyPI cannot be reached."""
    if site.exists():
        shutil.rmtree(site)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--retries",
        "2",
        "--timeout",
        "30",
        "--target",
        str(site),
        *LEGACY,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(LEGACY)} timed out: the package registry is too slow")
    if proc.returncode != 0:
        shutil.rmtree(site, ignore_errors=True)
        err = proc.stderr.strip()
        if any(s in err for s in UNREACHABLE):
            pytest.skip(
                f"pip cannot reach the package registry for {' '.join(LEGACY)}: "
                f"{err.splitlines()[-1] if err else proc.returncode}"
            )
        pytest.fail(f"pip install {' '.join(LEGACY)} failed:\n{err}")


@pytest.fixture(scope="module")
def legacy_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding transformers 4.46.3, kept in the pytest cache between runs."""
    cache = getattr(request.config, "cache", None)
    root = (
        Path(cache.mkdir("xvit-transformers-4.46.3")) if cache else tmp_path_factory.mktemp("tf4")
    )
    site, stamp = root / "site", root / "installed.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != list(LEGACY):
        _install(site)
        stamp.write_text(json.dumps(list(LEGACY)))
    return site


#: The tiny config both layouts are built from (the 4.x side in a subprocess).
LEGACY_CONFIG = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=DEPTH,
    num_attention_heads=HEADS,
    intermediate_size=4 * HIDDEN,
    patch_size=8,
    num_labels=NUM_CLASSES,
    layer_norm_eps=1e-6,
)


def run_with_transformers_4(site: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c script *args`` with the transformers 4.46.3 install first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def legacy_run(legacy_site: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Run the 4.x script once; its JSON report and the folder with its saved tensors."""
    out = tmp_path_factory.mktemp("legacy-out")
    base = LEGACY_CONFIG
    args = [str(out), json.dumps(KINDS), json.dumps(base), json.dumps(TARGETS)]
    proc = run_with_transformers_4(legacy_site, SCRIPT, *args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["base"] = base
    return report, out


def legacy_to_v5(key: str) -> str:
    """A transformers 4.x ViT/DeiT parameter name in the 5.x layout."""
    rules = [
        (r"\.encoder\.layer\.(\d+)\.", r".layers.\1."),
        (r"\.attention\.attention\.query\.", ".attention.q_proj."),
        (r"\.attention\.attention\.key\.", ".attention.k_proj."),
        (r"\.attention\.attention\.value\.", ".attention.v_proj."),
        (r"\.attention\.output\.dense\.", ".attention.o_proj."),
        (r"\.intermediate\.dense\.", ".mlp.fc1."),
        (r"\.output\.dense\.", ".mlp.fc2."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _v5_model(kind: str, base: dict, state: dict) -> torch.nn.Module:
    import transformers

    config_name, model_name, size = KINDS[kind]
    config = getattr(transformers, config_name)(**base, image_size=size)
    model = getattr(transformers, model_name)(config).eval()
    result = model.load_state_dict({legacy_to_v5(k): v for k, v in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def test_subprocess_ran_transformers_4(legacy_run, legacy_site: Path) -> None:
    report, _ = legacy_run
    assert report["version"] == "4.46.3"
    assert Path(report["file"]).is_relative_to(legacy_site)
    import transformers

    assert int(transformers.__version__.split(".")[0]) >= 5  # this process: the 5.x layout


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_layout_and_geometry(legacy_run, kind: str) -> None:
    report, out = legacy_run
    saved = torch.load(out / f"{kind}.pt")
    keys = set(saved["state_dict"])
    prefix = "vit" if kind == "vit" else "deit"
    assert f"{prefix}.encoder.layer.0.attention.attention.query.weight" in keys
    assert f"{prefix}.encoder.layer.{DEPTH - 1}.output.dense.weight" in keys
    geo = report[kind]["geometry"]
    size = KINDS[kind][2]
    assert geo["num_blocks"] == DEPTH and geo["num_heads"] == HEADS
    assert geo["hidden_size"] == HIDDEN
    assert geo["num_prefix_tokens"] == (2 if kind == "deit-teacher" else 1)
    assert tuple(geo["patch_size"]) == (8, 8) and tuple(geo["image_size"]) == tuple(size)
    assert report[kind]["hooks_unchanged"] and report[kind]["attn_impl_restored"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_gradmask_equals_the_same_weights_in_5x(legacy_run, kind: str) -> None:
    report, out = legacy_run
    saved = torch.load(out / f"{kind}.pt")
    model = _v5_model(kind, report["base"], saved["state_dict"])
    x = saved["x"]
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, saved["logits"], rtol=0, atol=1e-5)
    ours = xvit.explain("gradmask", model, x, target=TARGETS).map
    torch.testing.assert_close(saved["gradmask"], ours, rtol=1e-5, atol=1e-6)
    assert saved["gradmask"].shape == (2, *xvit.get_adapter(model).geometry.grid())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_legacy_attention_capture_equals_output_attentions(legacy_run, kind: str) -> None:
    _, out = legacy_run
    saved = torch.load(out / f"{kind}.pt")
    captured, own = saved["captured"], saved["own"]
    assert len(captured) == len(own) == DEPTH
    n = (2 if kind == "deit-teacher" else 1) + (KINDS[kind][2][0] // 8) * (KINDS[kind][2][1] // 8)
    for a, b in zip(captured, own):
        assert a.shape == (2, HEADS, n, n)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, HEADS, n))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_converter_reads_and_writes_the_legacy_layout(legacy_run, kind: str) -> None:
    report, out = legacy_run
    saved = torch.load(out / f"{kind}.pt")
    expected = "VisionTransformerDistilled" if kind == "deit-teacher" else "VisionTransformer"
    assert report[kind]["timm_class"] == expected
    assert report[kind]["back_class"] == KINDS[kind][1]
    torch.testing.assert_close(saved["timm_logits"], saved["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(saved["timm_gradmask"], saved["gradmask"], rtol=1e-5, atol=1e-6)
    original, back = saved["state_dict"], saved["back_state_dict"]
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    # the timm weights the 4.x model produced also load into a timm model built here
    twin = xvit.hf_to_timm(_v5_model(kind, report["base"], saved["state_dict"]))
    theirs = saved["timm_state_dict"]
    assert all(torch.equal(theirs[k], v) for k, v in twin.state_dict().items())
