"""Extract scikit-learn's 8x8 handwritten digits into ``xvit/data/digits8x8.npz``.

Run once (scikit-learn is needed here only, never at run time)::

    python benchmarks/extract_digits.py

The file holds ``images`` (N x 8 x 8 uint8, ink 0..16), ``labels`` (N uint8) and ``test``
(N bool): a fixed stratified split, 20% of each class's source digits held out, so the
``train`` and ``test`` splits of the embedded dataset never share a source digit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240611
TEST_FRACTION = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "xvit" / "data" / "digits8x8.npz"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test[idx[: round(TEST_FRACTION * len(idx))]] = True
    np.savez_compressed(args.out, images=images, labels=labels, test=test)
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(labels)} digits, "
        f"{int((~test).sum())} train / {int(test.sum())} test"
    )


if __name__ == "__main__":
    main()
