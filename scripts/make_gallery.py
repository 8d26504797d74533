"""Regenerate docs/images/gallery.png: held-out digits x every registered method.

Runs offline on the shipped model (``xvit:digits-vit``) and the embedded digits data, and
draws the gallery with :func:`xvit.demo.gallery`, the very function ``xvit demo`` uses (same
method settings, seeds and per-cell insertion and deletion AUCs), so the README's picture and
the demo's cannot drift apart. About a minute on 2 CPU cores.

Usage:
    python scripts/make_gallery.py [--model xvit:digits-vit] [--n 4] [--out docs/images/gallery.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import xvit
from xvit.data import get_dataset
from xvit.demo import GALLERY_ROWS, demo_methods, gallery

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xvit:digits-vit")
    parser.add_argument("--n", type=int, default=GALLERY_ROWS, help="held-out digits (rows)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "gallery.png")
    parser.add_argument("--methods", default="all", help="comma-separated names, or 'all'")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = xvit.load_model(args.model)
    samples = list(get_dataset("digits", split="test", n=args.n))
    methods = demo_methods()
    if args.methods != "all":
        wanted = [xvit.get_method(name.strip()).name for name in args.methods.split(",")]
        methods = [m for m in methods if m.name in wanted]
    path = gallery(model, samples, methods, args.out, model_name=args.model)
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
