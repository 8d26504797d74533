"""The datasets: embedded cluttered digits (boxes, determinism, splits) and ImageNet parsing."""

from __future__ import annotations

import numpy as np
import pytest

import xvit
from xvit.data import Sample, get_dataset, list_datasets
from xvit.data import digits as digits_module
from xvit.data.digits import CANVAS_SIZE, DIGIT_SIZE, source_digits


def _pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.image, dtype=np.int16)


def _ink(image: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background: the most common colour of the canvas."""
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return (image != background).any(axis=-1)


# --- the embedded digits -----------------------------------------------------------------


def test_registered_and_listed():
    assert {"digits", "imagenet"} <= set(list_datasets())
    assert list_datasets("dig*") == ["digits"]


def test_deterministic_from_the_seed():
    a = get_dataset("digits", split="test", n=6, seed=3)
    b = get_dataset("digits", split="test", n=6, seed=3)
    other = get_dataset("digits", split="test", n=6, seed=4)
    for sa, sb, so in zip(a, b, other):
        assert np.array_equal(_pixels(sa), _pixels(sb))
        assert (sa.label, sa.boxes, sa.id) == (sb.label, sb.boxes, sb.id)
        assert sa.id != so.id
    assert any(not np.array_equal(_pixels(sa), _pixels(so)) for sa, so in zip(a, other))
    # sample i does not depend on n or on which samples were made before
    longer = get_dataset("digits", split="test", n=50, seed=3)
    assert np.array_equal(_pixels(longer[5]), _pixels(a[5]))
    assert longer[5].id == a[5].id


def test_samples_are_rgb_canvases_with_one_small_box():
    ds = get_dataset("digits", split="train", n=40, seed=0)
    labels = []
    for s in ds:
        assert s.image.mode == "RGB" and s.image.size == (CANVAS_SIZE, CANVAS_SIZE)
        assert len(s.boxes) == 1
        x0, y0, x1, y1 = s.boxes[0]
        assert 0 <= x0 < x1 <= CANVAS_SIZE and 0 <= y0 < y1 <= CANVAS_SIZE
        # the object is small: at most the largest digit side, at most 15% of the canvas
        assert max(x1 - x0, y1 - y0) <= DIGIT_SIZE[1]
        assert (x1 - x0) * (y1 - y0) <= 0.15 * CANVAS_SIZE**2
        labels.append(s.label)
    assert set(labels) <= set(range(10)) and len(set(labels)) >= 8


@pytest.mark.parametrize("split", ["train", "test"])
def test_box_is_the_tight_box_of_the_target_ink(split):
    cluttered = get_dataset("digits", split=split, n=25, seed=11)
    clean = get_dataset("digits", split=split, n=25, seed=11, clutter=0)
    had_clutter = 0
    for sc, s0 in zip(cluttered, clean):
        # the clean canvas shows the very same target and nothing else
        assert (sc.label, sc.boxes) == (s0.label, s0.boxes)
        ink = _ink(_pixels(s0))
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        assert s0.boxes[0] == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        # clutter lies outside the box and never changes the target's pixels
        x0, y0, x1, y1 = (int(v) for v in sc.boxes[0])
        changed = (_pixels(sc) != _pixels(s0)).any(-1)
        assert not changed[y0:y1, x0:x1].any()
        had_clutter += bool(changed.any())
        # every clutter fragment is smaller than the digit, so the class stays unambiguous
        outside = _ink(_pixels(sc)).copy()
        outside[y0:y1, x0:x1] = False
        assert outside.sum() < ink.sum() * 3
    assert had_clutter >= 20


def test_target_is_a_source_digit_of_its_split_and_class(monkeypatch):
    images, labels, test = source_digits()
    seen = {}

    def spy(cells, height, width):
        if cells.shape == (8, 8):  # the whole target digit (fragments are smaller)
            seen["source"] = cells.copy()
        return upscale(cells, height, width)

    upscale = digits_module._upscale
    monkeypatch.setattr(digits_module, "_upscale", spy)
    used = {"train": set(), "test": set()}
    for split in used:
        for s in get_dataset("digits", split=split, n=30, seed=5, clutter=0):
            matches = np.flatnonzero((images == seen["source"]).all(axis=(1, 2)))
            assert len(matches) >= 1
            # every exact copy of that source digit is in this split and has this label
            assert all(bool(test[m]) == (split == "test") for m in matches)
            assert all(labels[m] == s.label for m in matches)
            used[split].update(matches.tolist())
    assert not used["train"] & used["test"]


def test_embedded_arrays_are_scikit_learn_digits_with_a_stratified_disjoint_split():
    images, labels, test = source_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == test.shape == (1797,)
    for c in range(10):
        share = test[labels == c].mean()
        assert 0.15 < share < 0.25
    datasets_module = pytest.importorskip("sklearn.datasets")
    ref = datasets_module.load_digits()
    np.testing.assert_array_equal(images * 16.0, ref.images)
    np.testing.assert_array_equal(labels, ref.target)


def test_sequence_protocol():
    ds = get_dataset("digits", n=5, seed=0)
    assert len(ds) == 5
    assert ds[-1].id == ds[4].id
    assert [s.id for s in ds[1:3]] == [ds[1].id, ds[2].id]
    assert ds[np.int64(2)].id == ds[2].id
    with pytest.raises(IndexError):
        ds[5]
    assert len(list(ds)) == 5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"split": "val"}, "'train' or 'test'"),
        ({"n": -1}, "n must be >= 0"),
        ({"n": 2.5}, "n must be an int"),
        ({"seed": "x"}, "seed must be an int"),
        ({"clutter": -2}, "clutter must be >= 0"),
        ({"digit_size": (4, 30)}, "digit_size"),
        ({"colour": "red"}, "no option 'colour'"),
    ],
)
def test_bad_digits_options(kwargs, needle):
    with pytest.raises(xvit.ParameterError, match=needle):
        get_dataset("digits", **kwargs)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(xvit.UnknownNameError, match="digits"):
        get_dataset("mnist")


# --- ImageNet validation, on a tiny fake tree ----------------------------------------------

# (file number, wnid index in the sorted ImageNet-1k list, image size, [(wnid index, box)])
_FAKE = [
    (1, 999, (40, 30), [(999, (3, 4, 20, 25))]),
    (2, 7, (50, 40), [(7, (0, 0, 49, 39)), (8, (10, 10, 12, 12))]),
    (3, 7, (32, 32), [(7, (5, 6, 7, 8)), (7, (1, 2, 30, 31))]),
    (4, 123, (30, 50), []),  # no box file for this one
    (5, 0, (44, 44), [(0, (2, 2, 10, 10))]),
    (6, 999, (36, 36), [(999, (30, 1, 40, 3))]),  # reaches past the right edge
]
# the devkit's own class ids (not the sorted order) for the wnids used above
_ILSVRC_ID = {999: 3, 7: 1, 123: 5, 0: 2, 8: 4}


def _fake_imagenet(tmp_path, flat=True):
    from PIL import Image
    from scipy.io import savemat

    classes = xvit.data.imagenet.imagenet_classes()
    root = tmp_path / ("val" if flat else "val_folders")
    root.mkdir()
    boxes = tmp_path / "bbox"
    boxes.mkdir(exist_ok=True)
    for num, cls, (w, h), objs in _FAKE:
        name = f"ILSVRC2012_val_{num:08d}"
        folder = root if flat else root / classes[cls]
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (w, h), (num * 20, 0, 0)).save(folder / f"{name}.JPEG")
        if objs:
            parts = "".join(
                f"<object><name>{classes[c]}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for c, b in objs
            )
            (boxes / f"{name}.xml").write_text(
                f"<annotation><filename>{name}</filename><size><width>{w}</width>"
                f"<height>{h}</height><depth>3</depth></size>{parts}</annotation>"
            )
    devkit = tmp_path / "devkit" / "data"
    devkit.mkdir(parents=True, exist_ok=True)
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(i, classes[c], f"class {c}", 0) for c, i in _ILSVRC_ID.items()]
    rows.append((1001, "n00001740", "entity", 5))  # an inner synset: never a label
    savemat(devkit / "meta.mat", {"synsets": np.array(rows, dtype=dtype)})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{_ILSVRC_ID[cls]}\n" for _, cls, _, _ in _FAKE)
    )
    return root, boxes, devkit, classes


def _expected(classes):
    """A plain reference: torchvision order is (class index, file name)."""
    rows = sorted(_FAKE, key=lambda r: (r[1], f"ILSVRC2012_val_{r[0]:08d}.JPEG"))
    out = []
    for num, cls, (w, h), objs in rows:
        boxes = tuple(
            (float(b[0]), float(b[1]), float(min(b[2] + 1, w)), float(min(b[3] + 1, h)))
            for c, b in objs
            if c == cls
        )
        out.append((f"ILSVRC2012_val_{num:08d}", cls, boxes))
    return out


def _summary(ds):
    return [(s.id, s.label, s.boxes) for s in ds]


def test_imagenet_devkit_labels_boxes_and_torchvision_order(tmp_path):
    root, boxes, devkit, classes = _fake_imagenet(tmp_path)
    expected = _expected(classes)
    for labels in (devkit.parent, devkit, devkit / "ILSVRC2012_validation_ground_truth.txt"):
        ds = get_dataset("imagenet", root=root, labels=labels, boxes=boxes)
        assert _summary(ds) == expected
    assert all(s.image.mode == "RGB" for s in ds)
    # a box ending at the last pixel ends at the image's edge; one past it is clipped
    two = next(x for x in ds if x.id.endswith("02"))
    assert two.boxes == ((0.0, 0.0, 50.0, 40.0),)
    six = next(x for x in ds if x.id.endswith("06"))
    assert six.boxes == ((30.0, 1.0, 36.0, 4.0),)


def test_imagenet_index_file_selects_in_the_given_order(tmp_path):
    root, boxes, devkit, classes = _fake_imagenet(tmp_path)
    expected = _expected(classes)
    index = tmp_path / "subset.txt"
    index.write_text("# the paper's subset\n4, 0\n2\n")
    ds = get_dataset("imagenet", root=root, labels=devkit, boxes=boxes, index_file=index)
    assert _summary(ds) == [expected[4], expected[0], expected[2]]
    np.save(tmp_path / "subset.npy", np.array([5, 1]))
    ds = get_dataset("imagenet", root=root, labels=devkit, index_file=tmp_path / "subset.npy")
    assert [s.id for s in ds] == [expected[5][0], expected[1][0]]
    assert all(s.boxes == () for s in ds)  # no boxes folder: unknown


def test_imagenet_folder_per_class_and_pair_labels_agree_with_the_devkit(tmp_path):
    root, boxes, _, classes = _fake_imagenet(tmp_path)
    folders, _, _, _ = _fake_imagenet(tmp_path, flat=False)
    expected = _expected(classes)
    assert _summary(get_dataset("imagenet", root=folders, boxes=boxes)) == expected
    assert _summary(get_dataset("imagenet", root=root, labels=folders, boxes=boxes)) == expected
    pairs = tmp_path / "val.txt"
    pairs.write_text("".join(f"ILSVRC2012_val_{num:08d}.JPEG {cls}\n" for num, cls, _, _ in _FAKE))
    assert _summary(get_dataset("imagenet", root=root, labels=pairs, boxes=boxes)) == expected
    # with no labels at all, each box file names the class (file 4 has none: left out)
    from_boxes = _summary(get_dataset("imagenet", root=root, boxes=boxes))
    assert from_boxes == [e for e in expected if not e[0].endswith("04")]


def test_imagenet_boxes_follow_a_resized_image(tmp_path):
    from PIL import Image

    root, boxes, devkit, _ = _fake_imagenet(tmp_path)
    # file 5 is 44 x 44 in its XML; shrink the image to 22 x 11
    Image.new("RGB", (22, 11)).save(root / "ILSVRC2012_val_00000005.JPEG")
    ds = get_dataset("imagenet", root=root, labels=devkit, boxes=boxes)
    five = next(s for s in ds if s.id.endswith("05"))
    assert five.image.size == (22, 11)
    assert five.boxes == ((1.0, 0.5, 5.5, 2.75),)


def test_imagenet_errors_name_the_problem(tmp_path):
    root, _, devkit, _ = _fake_imagenet(tmp_path)
    with pytest.raises(xvit.ParameterError, match="root="):
        get_dataset("imagenet")
    with pytest.raises(xvit.InvalidInputError, match="does not exist"):
        get_dataset("imagenet", root=tmp_path / "nowhere", labels=devkit)
    with pytest.raises(xvit.InvalidInputError, match="no labels"):
        get_dataset("imagenet", root=root)
    (devkit / "meta.mat").unlink()
    with pytest.raises(xvit.InvalidInputError, match=r"meta\.mat"):
        get_dataset("imagenet", root=root, labels=devkit)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 7 99")
    folders, _, _, _ = _fake_imagenet(tmp_path, flat=False)
    with pytest.raises(xvit.InvalidInputError, match="out of range"):
        get_dataset("imagenet", root=folders, index_file=bad)
    bad.write_text("1, two")
    with pytest.raises(xvit.InvalidInputError, match="integers"):
        get_dataset("imagenet", root=folders, index_file=bad)
