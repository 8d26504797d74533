"""How much bf16 autocast changes the maps of the mask-scoring methods, against fp32.

GradMask, RISE and ViT-CX take ``precision="bf16"``, which runs their masked forwards under
bfloat16 autocast (GradMask's gradient pass, which builds its masks, stays fp32). This script
explains the same images for the same targets (the fp32 predicted class) once in fp32 and
once in bf16 and compares the two maps of every image:

  * Spearman rank correlation of the flattened maps (``scipy.stats.spearmanr``), mean and
    minimum over images; two constant maps count as 1, one constant map as 0;
  * maximum absolute difference divided by the maximum ``|fp32 map|``, the largest over images;
  * the fraction of images whose arg-max patch is the same (maps finer than the patch grid,
    as RISE's and ViT-CX's pixel maps, are first averaged over each patch).

Models and images:

  * the shipped ``xvit:digits-vit`` and ``xvit:digits-deit`` on N digits test images (GradMask)
    and N // 8 of them (RISE with 1000 masks, seed 0, and ViT-CX, which are slower);
  * a random-weight timm ``vit_base_patch16_224`` (``torch.manual_seed(0)``) on 4 random
    ``torch.randn`` images, GradMask only.

Autocast runs on the CPU (use one with native bf16, e.g. AVX512-BF16); the matmul inputs are
rounded to bf16 as on a GPU, so the effect is representative, though accumulation differs.

    python benchmarks/precision_effect.py                    # full run, about 4 min on 2 cores
    python benchmarks/precision_effect.py --quick            # smoke run
    python benchmarks/precision_effect.py --json rows.json   # also save the rows
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import xvit
from xvit.data import get_dataset

DIGITS_MODELS = ("xvit:digits-vit", "xvit:digits-deit")
RANDOM_MODEL = "vit_base_patch16_224"
SLOW_METHODS: dict[str, dict[str, Any]] = {"rise": {"num_masks": 1000, "seed": 0}, "vitcx": {}}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where available) and its bf16 support."""
    name = platform.processor() or platform.machine()
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), "x86_64"):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    bf16 = "avx512_bf16" in flags.split()
    return f"{name} ({torch.get_num_threads()} threads, avx512_bf16: {'yes' if bf16 else 'no'})"


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two flattened maps; 1 if both are constant, 0 if one is."""
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if const_a or const_b:
        return 1.0 if const_a and const_b else 0.0
    return float(spearmanr(a, b).statistic)


def patch_argmax(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B,) index of each map's largest patch; maps finer than ``grid`` are patch-averaged."""
    if tuple(maps.shape[-2:]) != grid:
        maps = F.adaptive_avg_pool2d(maps.unsqueeze(1), grid).squeeze(1)
    return maps.flatten(1).argmax(1)


def compare(fp32: torch.Tensor, bf16: torch.Tensor, grid: tuple[int, int]) -> dict[str, Any]:
    """Agreement statistics of two B x h x w map batches (see the module docstring)."""
    a, b = fp32.double().flatten(1), bf16.double().flatten(1)
    rhos = [rank_correlation(x.numpy(), y.numpy()) for x, y in zip(a, b)]
    scale = a.abs().amax(1).clamp_min(torch.finfo(torch.float64).tiny)
    rel = (a - b).abs().amax(1) / scale
    same = patch_argmax(fp32.float(), grid) == patch_argmax(bf16.float(), grid)
    return {
        "spearman_mean": float(np.mean(rhos)),
        "spearman_min": float(np.min(rhos)),
        "max_rel_diff": float(rel.max()),
        "argmax_agree": float(same.double().mean()),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(
    label: str, model: torch.nn.Module, inputs: Any, method: str, params: dict[str, Any]
) -> dict[str, Any]:
    """fp32 and bf16 maps of one method on one model and batch, compared."""
    fp32, t32 = timed(lambda: xvit.explain(method, model, inputs, precision="fp32", **params))
    bf16, t16 = timed(
        lambda: xvit.explain(method, model, inputs, target=fp32.targets, precision="bf16", **params)
    )
    h, w = fp32.input_size
    ph, pw = xvit.get_adapter(model).geometry.patch_size
    row = {"model": label, "method": method, "images": len(fp32), "params": params}
    row.update(compare(fp32.map, bf16.map, (h // ph, w // pw)))
    row.update({"fp32_s": round(t32, 2), "bf16_s": round(t16, 2)})
    print(
        f"  {label} {method}: rho mean {row['spearman_mean']:.4f}, "
        f"max rel diff {row['max_rel_diff']:.2e} ({t32:.1f}s fp32, {t16:.1f}s bf16)",
        flush=True,
    )
    return row


def digits_rows(n: int) -> list[dict[str, Any]]:
    """Rows for the shipped digits models: GradMask on n images, RISE and ViT-CX on n // 8."""
    images = [s.image for s in get_dataset("digits", split="test", n=n)]
    few = images[: max(1, n // 8)]
    rows = []
    for name in DIGITS_MODELS:
        model = xvit.load_model(name)
        rows.append(measure(name, model, images, "gradmask", {}))
        for method, params in SLOW_METHODS.items():
            rows.append(measure(name, model, few, method, params))
    return rows


def random_vit_rows(n: int) -> list[dict[str, Any]]:
    """GradMask rows for a random-weight ViT-B/16 on n random images."""
    torch.manual_seed(0)
    model = timm.create_model(RANDOM_MODEL, pretrained=False).eval()
    inputs = torch.randn(n, 3, 224, 224)
    return [measure(f"{RANDOM_MODEL} (random weights)", model, inputs, "gradmask", {})]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | method | images | Spearman mean | Spearman min | max rel. diff "
        "| arg-max patch agree | fp32 s | bf16 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['images']} | {r['spearman_mean']:.4f} "
            f"| {r['spearman_min']:.4f} | {r['max_rel_diff']:.2e} | {r['argmax_agree']:.3f} "
            f"| {r['fp32_s']:.1f} | {r['bf16_s']:.1f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--n", type=int, default=None, help="digits images (64; 8 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="save the rows to this file")
    return parser.parse_args()


def main() -> None:
    """Run every case, print the table, optionally save the rows."""
    args = parse_args()
    n = args.n or (8 if args.quick else 64)
    n_random = 2 if args.quick else 4
    print(f"torch {torch.__version__}, timm {timm.__version__}; CPU: {cpu_name()}", flush=True)
    t0 = time.perf_counter()
    rows = digits_rows(n) + random_vit_rows(n_random)
    total = time.perf_counter() - t0
    print()
    print(markdown_table(rows))
    print(f"\ntotal {total:.0f} s")
    if args.json is not None:
        meta = {"torch": torch.__version__, "timm": timm.__version__, "cpu": cpu_name()}
        payload = {"meta": {**meta, "quick": args.quick, "seconds": round(total, 1)}}
        payload["rows"] = rows
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
