"""Time of one GradMask explanation on every model family, on the tiny test configs (CPU).

The models are the ones the tests build (tests/conftest.py, tests/family_models.py): 2-3
blocks, 32 x 32 inputs, 8 x 8 patches. The numbers say what each family's adapter costs on
top of the same amount of model work, not how fast a real model runs. Each family is timed
in interleaved rounds (this machine's speed drifts) and keeps its best round.

Run from the repository root: ``python benchmarks/family_times.py [--rounds 5] [--images 4]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from family_models import FAMILY_FACTORIES

import xvit
from conftest import MODEL_FACTORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    factories = {**{k: MODEL_FACTORIES[k] for k in ("timm-vit", "hf-vit")}, **FAMILY_FACTORIES}
    models = {name: build().eval() for name, build in factories.items()}
    inputs = {}
    for name, model in models.items():
        h, w = xvit.get_adapter(model).geometry.image_size
        inputs[name] = torch.randn(args.images, 3, h, w)
        xvit.explain("gradmask", model, inputs[name][:1], progress=False)  # warm-up
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            xvit.explain("gradmask", model, inputs[name], progress=False)
            best[name] = min(best[name], time.perf_counter() - start)
    print(
        f"| family | adapter | ms per GradMask explanation ({args.images} images, best of "
        f"{args.rounds}) |"
    )
    print("|---|---|---|")
    for name, model in models.items():
        adapter = type(xvit.get_adapter(model)).__name__
        print(f"| {name} | {adapter} | {1000 * best[name] / args.images:.1f} |")


if __name__ == "__main__":
    main()
