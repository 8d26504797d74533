"""How far insertion/deletion AUCs move with the order of tied pixels, per method.

The shipped ``xvit:digits-vit`` explains N held-out digits (the test split, its labels as
targets) with every registered method, at the digits benchmark's settings
(:func:`xvit.demo.demo_methods`: each method at its ``demo_params``); each map is then scored
by Insertion and Deletion under the ``"rise"`` protocol (one row of 64 pixels per step, blur / zero
substrates) and the ``"gradmask"`` protocol (1, 5, 10, ..., 100 %, the authors' black
baseline) with three tie rules:

  * ``argsort``: the authors' order (numpy's default, non-stable ``argsort``), what the
    protocols use;
  * ``raster``: tied pixels in raster order (xvit's rule before this change);
  * ``groups``: xvit's default, tie groups never split (interpolated between whole groups).

For each (method, protocol, metric) the table gives the mean AUC under the authors' order,
the shift of that mean under raster order and under the groups rule, and the largest
per-image shift. It also gives the share of map entries (at the map's own resolution) whose
value repeats another entry of the same map. Run from the repository root with
``PYTHONPATH=.`` so that this checkout's xvit is imported.

    python benchmarks/tie_effect.py                  # 100 images, a few minutes on 2 cores
    python benchmarks/tie_effect.py --n 8            # smoke run
    python benchmarks/tie_effect.py --out benchmarks/results/tie_effect_cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import xvit
from xvit.data import get_dataset
from xvit.demo import demo_methods
from xvit.metrics import Deletion, Insertion

TIES = ("argsort", "raster", "groups")
PROTOCOL_SETTINGS: dict[str, dict[str, Any]] = {
    "rise": {"ins": "blur", "del": "zero"},
    "gradmask": {"ins": "black", "del": "black"},
}


def patch_tie_share(maps: torch.Tensor) -> float:
    """Mean share of map entries whose value equals another entry of the same map."""
    shares = []
    for m in maps.flatten(1):
        _, counts = torch.unique(m, return_counts=True)
        shares.append(float(counts[counts > 1].sum()) / m.numel())
    return sum(shares) / len(shares)


def score(model: Any, x: torch.Tensor, labels: list[int], maps: torch.Tensor) -> dict:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for protocol, subs in PROTOCOL_SETTINGS.items():
        out[protocol] = {}
        for metric, key in ((Insertion, "ins"), (Deletion, "del")):
            out[protocol][key] = {}
            for ties in TIES:
                m = metric(protocol=protocol, substrate=subs[key], ties=ties, batch_size=256)
                out[protocol][key][ties] = m(model, x, labels, maps).scores.tolist()
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| method | tied map values | protocol | metric | AUC (authors' order) | "
        "mean shift raster | mean shift groups | max per-image shift raster | "
        "max per-image shift groups |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for protocol in PROTOCOL_SETTINGS:
            for key, name in (("ins", "insertion"), ("del", "deletion")):
                s = {t: torch.tensor(row["scores"][protocol][key][t]) for t in TIES}
                ref = s["argsort"]
                lines.append(
                    f"| {row['method']} | {row['tie_share']:.0%} | {protocol} | {name} | "
                    f"{ref.mean():.4f} | {(s['raster'] - ref).mean():+.4f} | "
                    f"{(s['groups'] - ref).mean():+.4f} | {(s['raster'] - ref).abs().max():.4f} | "
                    f"{(s['groups'] - ref).abs().max():.4f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="held-out digits (default 100)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = xvit.load_model("xvit:digits-vit")
    data = get_dataset("digits", split="test", n=args.n)
    images, labels = [d.image for d in data], [d.label for d in data]
    rows = []
    for method in demo_methods():  # every method, with the digits benchmark's settings
        t0 = time.perf_counter()
        e = xvit.explain(method, model, images, target=labels)
        scores = score(model, e.inputs, labels, e)
        rows.append(
            {
                "method": method.name,
                "tie_share": patch_tie_share(e.map),
                "scores": scores,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"{method.name}: {rows[-1]['seconds']:.0f} s", flush=True)
    text = (
        f"# AUC shifts from the order of tied pixels: xvit:digits-vit, {args.n} test digits\n\n"
        f"python benchmarks/tie_effect.py --n {args.n} ({platform.machine()}, "
        f"torch {torch.__version__}, numpy {__import__('numpy').__version__})\n\n"
        f"{table(rows)}\n"
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
