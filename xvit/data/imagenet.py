"""ImageNet (ILSVRC2012) validation images with labels and bounding boxes, as users have them.

Images are read from ``root``: either the flat folder of the official archive
(``ILSVRC2012_val_00000001.JPEG`` ...) or a folder per class (``root/n01440764/...``, the
layout torchvision's ``ImageNet(split='val')`` makes). Labels come from, in this order of
preference: the ``labels`` argument (the devkit, its ground-truth file, a folder-per-class
tree, or a two-column ``file label`` text file), the class folders of ``root``, or the
``<name>`` of the box files. Boxes come from the validation XML files (one per image,
``ILSVRC2012_val_00000001.xml``), keeping only the objects of the image's label.

Order and indices: samples come in the order of torchvision's ``ImageNet(split='val')``,
which is an ``ImageFolder`` over class folders: sorted by class (the sorted WordNet ids, so
class index = the standard ImageNet-1k index) and, within a class, by file name. The
order is computed from the labels of every image they cover (all 50,000 with the devkit),
not from the files present, so an ``index_file`` (indices into that order, e.g. the
GradMask paper's 5000-image subset) selects the same images whatever else is on disk.

Box coordinates: the XML gives inclusive, 0-based pixel indices ``xmin..xmax``; they
become the half-open :class:`~xvit.data.Sample` box ``(xmin, ymin, xmax + 1, ymax + 1)``,
clipped to the image, and rescaled when the XML's ``<size>`` differs from the image's.

References:
    O. Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .._errors import InvalidInputError, ParameterError
from .._inputs import load_image
from ._base import Box, LazySamples, Sample

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
_WNID = re.compile(r"^n\d{8}$")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted, as torchvision)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def _as_path(name: str, value: str | Path) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise InvalidInputError(f"{name} {str(path)!r} does not exist; check the path")
    return path


def _class_folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _WNID.match(p.name))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_images(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """stem -> image path, and stem -> wnid for images inside class folders."""
    files: dict[str, Path] = {}
    folder_labels: dict[str, str] = {}
    folders = _class_folders(root)
    for folder in folders:
        for p in _images_in(folder):
            files[p.stem] = p
            folder_labels[p.stem] = folder.name
    for p in _images_in(root):
        files.setdefault(p.stem, p)
    return files, folder_labels


def _meta_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets in the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"])
        wnids = np.atleast_1d(synsets["WNID"])
        children = np.atleast_1d(synsets["num_children"])
    except Exception as exc:
        raise InvalidInputError(
            f"{meta} is not the ILSVRC2012 devkit's meta.mat (a 'synsets' struct with "
            f"ILSVRC2012_ID, WNID and num_children): {exc}"
        ) from None
    return {int(i): str(w) for i, w, c in zip(ids, wnids, children) if int(c) == 0}


def _devkit_labels(gt: Path) -> dict[str, str]:
    """stem -> wnid from the devkit ground truth (line i is ``ILSVRC2012_val_<i>``)."""
    candidates = [gt.with_name("meta.mat"), gt.parent / "data" / "meta.mat"]
    meta = next((c for c in candidates if c.is_file()), None)
    if meta is None:
        raise InvalidInputError(
            f"{gt.name} holds ILSVRC2012 class ids, which need the devkit's meta.mat to map to "
            f"class names; keep meta.mat beside it (as in ILSVRC2012_devkit_t12/data/) or pass "
            f"a folder-per-class tree as labels"
        )
    id_to_wnid = _meta_wnids(meta)
    out: dict[str, str] = {}
    for line_no, line in enumerate(gt.read_text().split(), start=1):
        try:
            out[f"ILSVRC2012_val_{line_no:08d}"] = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise InvalidInputError(
                f"{gt}, entry {line_no}: {line!r} is not a class id listed in {meta}"
            ) from None
    return out


def _pair_labels(path: Path, classes: list[str]) -> dict[str, str]:
    """stem -> wnid from lines ``<file> <wnid or class index>`` (commas allowed)."""
    out: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#") or fields[0].lower() in ("imageid", "file"):
            continue
        if len(fields) < 2:
            raise InvalidInputError(
                f"{path}, line {line_no}: expected '<file> <label>', got {line!r}"
            )
        stem, label = Path(fields[0]).stem, fields[1]
        if _WNID.match(label):
            out[stem] = label
        elif label.isdigit() and int(label) < len(classes):
            out[stem] = classes[int(label)]
        else:
            raise InvalidInputError(
                f"{path}, line {line_no}: label {label!r} is neither a WordNet id (n01440764) "
                f"nor a class index 0..{len(classes) - 1}"
            )
    return out


def _read_labels(labels: Path, classes: list[str]) -> dict[str, str]:
    if labels.is_dir():
        gt = next(
            (c for c in (labels / GROUND_TRUTH, labels / "data" / GROUND_TRUTH) if c.is_file()),
            None,
        )
        if gt is not None:
            return _devkit_labels(gt)
        folders = _class_folders(labels)
        if folders:
            return {p.stem: f.name for f in folders for p in _images_in(f)}
        raise InvalidInputError(
            f"labels folder {labels} has neither the devkit's {GROUND_TRUTH} (in it or in "
            f"data/) nor class folders named by WordNet id (n01440764/...); pass one of these"
        )
    first = next((ln.split() for ln in labels.read_text().splitlines() if ln.strip()), [])
    if len(first) == 1 and first[0].isdigit():
        return _devkit_labels(labels)
    return _pair_labels(labels, classes)


def read_index_file(path: str | Path) -> list[int]:
    """Indices from a text file (integers separated by spaces, commas or newlines; ``#``
    comments), a ``.npy`` array or a ``.json`` list."""
    p = _as_path("index_file", path)
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False).reshape(-1).tolist()
        elif p.suffix == ".json":
            values = json.loads(p.read_text())
        else:
            text = re.sub(r"#[^\n]*", "", p.read_text())
            values = [int(v) for v in text.replace(",", " ").split()]
    except (ValueError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"index_file {p} must hold integers (text: separated by spaces, commas or newlines; "
            f"or .npy / .json): {exc}"
        ) from None
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise InvalidInputError(f"index_file {p} must hold a flat list of integers")
    return values


def parse_boxes(xml_path: str | Path, wnid: str | None = None) -> tuple[tuple[int, int], list]:
    """Read one ILSVRC box file.

    Args:
        xml_path: The XML file.
        wnid: Keep only objects of this class (None: all).

    Returns:
        ((width, height) from ``<size>``, [(wnid, (x0, y0, x1, y1)), ...]) with half-open
        boxes ``(xmin, ymin, xmax + 1, ymax + 1)``.
    """
    try:
        tree = ET.parse(str(xml_path)).getroot()
        size = tree.find("size")
        width = int(size.findtext("width", "0")) if size is not None else 0
        height = int(size.findtext("height", "0")) if size is not None else 0
        found = []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if bb is None or (wnid is not None and name != wnid):
                continue
            corners = ("xmin", "ymin", "xmax", "ymax")
            x0, y0, x1, y1 = (float(bb.findtext(k, "nan")) for k in corners)
            found.append((name, (x0, y0, x1 + 1.0, y1 + 1.0)))
    except (ET.ParseError, ValueError) as exc:
        raise InvalidInputError(f"{xml_path} is not a readable ILSVRC box file: {exc}") from None
    return (width, height), found


class ImageNetVal(LazySamples):
    """ImageNet validation images in torchvision ``ImageNet(split='val')`` order.

    Args:
        root: Folder of validation images (flat, or one folder per class).
        labels: The devkit folder, its ``ILSVRC2012_validation_ground_truth.txt`` (with
            ``meta.mat`` beside it), a folder-per-class tree, or a ``<file> <label>`` text
            file (label: WordNet id or class index). None: the class folders of ``root``,
            else the class named in each image's box file.
        boxes: Folder of the validation XML box files (searched recursively); None: no
            boxes (``Sample.boxes == ()``).
        index_file: Indices into the full validation order selecting a subset, in the order
            given. None: every labelled image found under ``root``.

    Example:
        >>> ds = ImageNetVal("ILSVRC2012/val", labels="ILSVRC2012_devkit_t12",
        ...                  boxes="ILSVRC2012/bbox_val", index_file="subset.txt")
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path | None = None,
        labels: str | Path | None = None,
        boxes: str | Path | None = None,
        index_file: str | Path | None = None,
    ) -> None:
        if root is None:
            raise ParameterError(
                "the imagenet dataset needs root= (the folder of ILSVRC2012 validation "
                "images); for an offline dataset that needs no download use 'digits'"
            )
        self.root = _as_path("root", root)
        if not self.root.is_dir():
            raise InvalidInputError(f"root {self.root} is a file; pass the folder of images")
        self.classes = imagenet_classes()
        self._class_index = {w: i for i, w in enumerate(self.classes)}
        files, folder_labels = _scan_images(self.root)
        if not files:
            raise InvalidInputError(
                f"no images (.JPEG, .jpg, .png) in {self.root} or its class folders"
            )
        self._boxes: dict[str, Path] = {}
        if boxes is not None:
            box_dir = _as_path("boxes", boxes)
            self._boxes = {p.stem: p for p in sorted(box_dir.rglob("*.xml"))}
            if not self._boxes:
                raise InvalidInputError(f"no .xml box files under {box_dir}")

        if labels is not None:
            wnids = _read_labels(_as_path("labels", labels), self.classes)
        elif folder_labels:
            wnids = folder_labels
        elif self._boxes:
            wnids = {}
            for stem in files:
                if stem in self._boxes:
                    _, objs = parse_boxes(self._boxes[stem])
                    if objs:
                        wnids[stem] = objs[0][0]
        else:
            raise InvalidInputError(
                f"no labels for the images in {self.root}: pass labels= (the devkit or its "
                f"ground-truth file, or a folder-per-class tree), arrange the images in class "
                f"folders, or pass boxes= (each box file names its class)"
            )
        unknown = sorted({w for w in wnids.values() if w not in self._class_index})
        if unknown:
            raise InvalidInputError(
                f"labels name {len(unknown)} classes that are not ImageNet-1k WordNet ids, "
                f"e.g. {unknown[:3]}; check the labels source"
            )
        # torchvision's ImageFolder order: by class index, then by file name
        order = sorted(wnids, key=lambda s: (self._class_index[wnids[s]], _file_name(s, files)))
        self._wnids = wnids
        self._files = files
        if index_file is None:
            chosen = [s for s in order if s in files]
        else:
            indices = read_index_file(index_file)
            bad = [i for i in indices if not 0 <= i < len(order)]
            if bad:
                raise InvalidInputError(
                    f"index_file {index_file} has indices out of range 0..{len(order) - 1} "
                    f"(e.g. {bad[:3]}): the labels cover {len(order)} images; indices refer to "
                    f"torchvision's ImageNet(split='val') order over all 50000 images, so pass "
                    f"the full devkit ground truth"
                )
            chosen = [order[i] for i in indices]
            missing = [s for s in chosen if s not in files]
            if missing:
                raise InvalidInputError(
                    f"{len(missing)} images selected by {index_file} are not under {self.root} "
                    f"(e.g. {missing[0]}); add them or use a smaller index file"
                )
        self._stems = chosen
        self._length = len(chosen)
        self.box_dir = boxes

    def __repr__(self) -> str:
        return f"ImageNetVal(root={str(self.root)!r}, n={len(self)})"

    def _make(self, index: int) -> Sample:
        stem = self._stems[index]
        wnid = self._wnids[stem]
        image = load_image(self._files[stem])
        return Sample(
            image=image,
            label=self._class_index[wnid],
            boxes=self._read_boxes(stem, wnid, image.size),
            id=stem,
        )

    def _read_boxes(self, stem: str, wnid: str, image_size: tuple[int, int]) -> tuple[Box, ...]:
        path = self._boxes.get(stem)
        if path is None:
            return ()
        (xml_w, xml_h), objs = parse_boxes(path, wnid)
        w, h = image_size
        sx = w / xml_w if xml_w > 0 else 1.0
        sy = h / xml_h if xml_h > 0 else 1.0
        out = []
        for _, (x0, y0, x1, y1) in objs:
            box = (
                min(max(x0 * sx, 0.0), w),
                min(max(y0 * sy, 0.0), h),
                min(max(x1 * sx, 0.0), w),
                min(max(y1 * sy, 0.0), h),
            )
            if box[2] > box[0] and box[3] > box[1]:
                out.append(box)
        return tuple(out)


def _file_name(stem: str, files: dict[str, Path]) -> str:
    path = files.get(stem)
    return path.name if path is not None else f"{stem}.JPEG"
