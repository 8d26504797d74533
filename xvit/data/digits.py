"""The embedded "digits" dataset: a handwritten digit with a known box among clutter.

Each sample is a small RGB canvas holding one of scikit-learn's 8x8 handwritten digits,
scaled up and placed at a random position, plus fragments cut from other digits (at most
half a digit wide and high, so the class stays unambiguous) that never touch the target's
box. The box is the tight box of the target's ink. Everything is drawn from a seed: the
same ``(split, seed, index)`` always gives the same image, on any machine.

The ``train`` and ``test`` splits draw on disjoint source digits (targets and fragments
alike), fixed in ``digits8x8.npz`` by ``benchmarks/extract_digits.py``.

References:
    E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
    Learning Repository, 1998 (CC BY 4.0), as shipped with scikit-learn.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .._errors import ParameterError
from ._base import Box, LazySamples, Sample

#: Side of the square canvas, in pixels.
CANVAS_SIZE = 64
#: Patch size the shipped digit models use on this canvas (an 8 x 8 patch grid).
PATCH_SIZE = 8
#: Default smallest and largest side of the scaled-up digit, in pixels.
DIGIT_SIZE = (16, 24)
#: Default largest number of clutter fragments per image (at least half of it are drawn).
CLUTTER = 6
NUM_CLASSES = 10
#: The class names the shipped digit models carry: the digit itself.
CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
#: Range of each RGB channel of the flat background, as a fraction of full brightness.
BACKGROUND = (0.0, 0.35)
#: Range of each RGB channel of the target's ink (fragments share it).
INK = (0.6, 1.0)

#: What the shipped digit models saw in training (``benchmarks/train_digits.py`` draws every
#: training image from :class:`DigitCanvases`, clean digits first, then up to ``CLUTTER``
#: fragments).
TRAINED_ON = (
    f"{CANVAS_SIZE} x {CANVAS_SIZE} px canvases holding one light handwritten digit "
    f"{DIGIT_SIZE[0]}-{DIGIT_SIZE[1]} px high, anywhere, on a flat dark background (random "
    f"colours: each ink channel {INK[0]:.0%}-{INK[1]:.0%} and each background channel "
    f"{BACKGROUND[0]:.0%}-{BACKGROUND[1]:.0%} of full brightness), among up to {CLUTTER} "
    f"smaller fragments of other digits"
)

_SPLITS = {"train": 0, "test": 1}
_INK_CUTOFF = 0.15  # alpha below this is not drawn, so the ink (and its box) is crisp
_FRAGMENT_CELLS = (2, 4)  # fragment height and width, in source cells (the source is 8 x 8)
_MARGIN = 2  # fragments keep this many pixels away from the target's box
_PLACEMENT_TRIES = 20


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped 8x8 digits: images (N x 8 x 8, ink 0..16), labels (N,), test mask (N,)."""
    with np.load(Path(__file__).with_name("digits8x8.npz")) as f:
        images = f["images"].astype(np.float32) / 16.0
        return images, f["labels"].astype(np.int64), f["test"].astype(bool)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ParameterError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _upscale(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize an ink array (values in [0, 1]) and drop faint ink."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(cells, dtype=np.float32), mode="F")
    alpha = np.asarray(img.resize((width, height), resample=Image.Resampling.BILINEAR))
    alpha = np.clip(alpha, 0.0, 1.0)
    return np.where(alpha >= _INK_CUTOFF, alpha, 0.0).astype(np.float32)


class DigitCanvases(LazySamples):
    """Cluttered digit canvases, made when indexed.

    Args:
        split: ``"train"`` or ``"test"``; the two use disjoint source digits.
        n: Number of samples.
        seed: Seed of the whole sequence; sample ``i`` depends only on (split, seed, i).
        clutter: Largest number of fragments per image (between ``clutter // 2`` and
            ``clutter`` are drawn); 0 gives clean digits with the same targets.
        digit_size: (smallest, largest) side of the scaled-up digit in pixels.
        canvas_size: Side of the square canvas in pixels.

    Example:
        >>> ds = DigitCanvases(split="test", n=2, seed=1)
        >>> s = ds[0]
        >>> s.image.size, s.label in range(10), len(s.boxes)
        ((64, 64), True, 1)
    """

    def __init__(
        self,
        split: str = "test",
        n: int = 1000,
        seed: int = 0,
        clutter: int = CLUTTER,
        digit_size: tuple[int, int] = DIGIT_SIZE,
        canvas_size: int = CANVAS_SIZE,
    ) -> None:
        if split not in _SPLITS:
            raise ParameterError(
                f"unknown digits split {split!r}: use 'train' or 'test' (disjoint source digits)"
            )
        self.split = split
        self._length = _check_int("n", n, 0)
        self.seed = _check_int("seed", seed, 0)
        self.clutter = _check_int("clutter", clutter, 0)
        self.canvas_size = _check_int("canvas_size", canvas_size, 8)
        if (
            not isinstance(digit_size, (tuple, list))
            or len(digit_size) != 2
            or not all(isinstance(v, (int, np.integer)) for v in digit_size)
            or not 8 <= digit_size[0] <= digit_size[1] <= self.canvas_size
        ):
            raise ParameterError(
                f"digit_size must be (smallest, largest) ints with 8 <= smallest <= largest "
                f"<= canvas_size ({self.canvas_size}), got {digit_size!r}"
            )
        self.digit_size = (int(digit_size[0]), int(digit_size[1]))
        _, labels, test = source_digits()
        keep = test if split == "test" else ~test
        self._pool = np.flatnonzero(keep)
        self._by_class = [self._pool[labels[self._pool] == c] for c in range(NUM_CLASSES)]

    def __repr__(self) -> str:
        return (
            f"DigitCanvases(split={self.split!r}, n={len(self)}, seed={self.seed}, "
            f"clutter={self.clutter}, digit_size={self.digit_size}, "
            f"canvas_size={self.canvas_size})"
        )

    def _make(self, index: int) -> Sample:
        image, label, box = self.render(index)
        from PIL import Image

        return Sample(
            image=Image.fromarray(image, mode="RGB"),
            label=label,
            boxes=(box,),
            id=f"digits-{self.split}-{self.seed}-{index}",
        )

    def render(self, index: int) -> tuple[np.ndarray, int, Box]:
        """Sample ``index`` as an H x W x 3 uint8 array, its label and the target's box."""
        images, _, _ = source_digits()
        seq = np.random.SeedSequence([self.seed, _SPLITS[self.split], index])
        target_rng, clutter_rng = (np.random.default_rng(s) for s in seq.spawn(2))
        size = self.canvas_size

        # the target: class, source digit, size, place and colours (its own stream, so the
        # clean version of a sample, clutter=0, shows the very same target)
        label = int(target_rng.integers(NUM_CLASSES))
        source = int(target_rng.choice(self._by_class[label]))
        side = int(target_rng.integers(self.digit_size[0], self.digit_size[1] + 1))
        x, y = (int(v) for v in target_rng.integers(0, size - side + 1, size=2))
        background = target_rng.uniform(*BACKGROUND, size=3)
        ink = target_rng.uniform(*INK, size=3)
        alpha = np.zeros((size, size), dtype=np.float32)
        alpha[y : y + side, x : x + side] = _upscale(images[source], side, side)
        rows = np.flatnonzero(alpha.any(axis=1))
        cols = np.flatnonzero(alpha.any(axis=0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))

        if self.clutter:
            self._draw_clutter(alpha, box, side / 8.0, clutter_rng)

        pixels = background + alpha[..., None] * (ink - background)
        return np.round(pixels * 255.0).astype(np.uint8), label, box

    def _draw_clutter(
        self, alpha: np.ndarray, box: Box, scale: float, rng: np.random.Generator
    ) -> None:
        images, _, _ = source_digits()
        size = self.canvas_size
        x0, y0, x1, y1 = (int(v) for v in box)
        keep_out = (x0 - _MARGIN, y0 - _MARGIN, x1 + _MARGIN, y1 + _MARGIN)
        count = int(rng.integers(self.clutter // 2, self.clutter + 1))
        for _ in range(count):
            source = images[int(rng.choice(self._pool))]
            ch, cw = (int(v) for v in rng.integers(_FRAGMENT_CELLS[0], _FRAGMENT_CELLS[1] + 1, 2))
            cy, cx = int(rng.integers(0, 9 - ch)), int(rng.integers(0, 9 - cw))
            cells = source[cy : cy + ch, cx : cx + cw]
            h, w = max(1, round(ch * scale)), max(1, round(cw * scale))
            piece = _upscale(cells, h, w)
            if not piece.any():
                continue
            for _ in range(_PLACEMENT_TRIES):
                fx = int(rng.integers(0, size - w + 1))
                fy = int(rng.integers(0, size - h + 1))
                apart = (
                    fx + w <= keep_out[0]
                    or fx >= keep_out[2]
                    or fy + h <= keep_out[1]
                    or fy >= keep_out[3]
                )
                if apart:
                    region = alpha[fy : fy + h, fx : fx + w]
                    np.maximum(region, piece, out=region)
                    break
