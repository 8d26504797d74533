"""Peak host memory of every method against the amount of work, for ``bench_speed.py``.

Each measurement is a fresh Python process (its VmHWM: the peak resident set of that process
alone; ``ru_maxrss`` would carry over the parent's peak through fork + exec), explaining on a
small random-weight timm ViT (32 x 32 inputs, 8 x 8 patches) built from its config:

* images: ``small`` against ``large`` images, every registered method at its quick
  parameters (the images themselves are counted: they live in the process, as they do when
  a user holds them);
* masks: for methods whose work grows with a count parameter (RISE's ``num_masks`` and the
  like), 1,000 against 16,000 on two images.

Flat means the ratio stays within 1.2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import xvit

#: Parameters that set how many masked or perturbed inputs a method scores per image.
WORK_PARAMS = ("num_masks", "n_masks", "num_samples", "n_samples", "nt_samples", "n_steps", "steps")

_CODE = """
import json, sys, torch, timm, xvit
torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                          depth=4, num_classes=10).eval()
method, n, params = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
x = torch.randn(n, 3, 32, 32)
xvit.explain(method, model, x, **params)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(int(hwm.split()[1]) * 1024)
"""


def peak_rss(method: str, images: int, params: dict[str, Any]) -> float:
    """Peak resident bytes of a fresh process that explains ``images`` random images."""
    out = subprocess.run(
        [sys.executable, "-c", _CODE, method, str(images), json.dumps(params)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{method} on {images} images failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def method_params(method: str) -> dict[str, Any]:
    """A method's quick parameters, seeded when it is randomized."""
    cls = xvit.get_method(method)
    params = dict(cls.quick_params)
    if cls.randomized:
        params["seed"] = 0
    return params


def work_param(method: str) -> str | None:
    """The parameter that sets how many masks/samples ``method`` scores, if it has one."""
    names = xvit.get_method(method).param_names()
    return next((p for p in WORK_PARAMS if p in names), None)


def memory_rows(methods: list[str], small: int, large: int) -> list[dict[str, Any]]:
    """One row per method and kind of work: peak RSS at the small and large amount."""
    rows = []
    for method in methods:
        params = method_params(method)
        a, b = peak_rss(method, small, params), peak_rss(method, large, params)
        rows.append(memory_row(method, "images", small, large, a, b))
        print("memory:", json.dumps(rows[-1]), flush=True)
        param = work_param(method)
        if param is not None:
            lo = peak_rss(method, 2, {**params, param: 1000})
            hi = peak_rss(method, 2, {**params, param: 16000})
            rows.append(memory_row(method, param, 1000, 16000, lo, hi))
            print("memory:", json.dumps(rows[-1]), flush=True)
    return rows


def memory_row(
    method: str, work: str, small: int, large: int, a: float, b: float
) -> dict[str, Any]:
    """One table row: peak bytes ``a`` at the ``small`` amount of work, ``b`` at ``large``."""
    return {
        "method": method,
        "work": work,
        "small": small,
        "large": large,
        "peak_small_mb": a / 2**20,
        "peak_large_mb": b / 2**20,
        "ratio": b / a,
    }
