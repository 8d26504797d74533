"""The models that ship with xvit, loadable by name with :func:`xvit.load_model`.

``xvit:digits-vit`` and ``xvit:digits-deit`` are a small timm ViT and DeiT-distilled
trained on the embedded cluttered-digits dataset (``xvit.data``, 64 px canvas, 8 x 8
patch grid) by ``benchmarks/train_digits.py``; their checkpoints carry the canvas
preprocessing. ``xvit:digits-vit-hf`` and ``xvit:digits-deit-hf`` are their HuggingFace
twins (``ViTForImageClassification`` and ``DeiTForImageClassificationWithTeacher``),
converted from the same checkpoints when loaded, so no extra files ship.

References:
    A. Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; H. Touvron et al.,
    "Training data-efficient image transformers & distillation through attention", ICML 2021.

Example:
    >>> import xvit
    >>> "xvit:digits-vit-hf" in xvit.model_aliases
    True
    >>> model = xvit.load_model("xvit:digits-vit")  # doctest: +SKIP
    >>> xvit.get_adapter(model).geometry.grid()  # doctest: +SKIP
    (8, 8)
"""

from __future__ import annotations

from pathlib import Path

from ._loading import HF_TWIN, model_aliases

#: Folder of the shipped checkpoints.
ASSETS = Path(__file__).resolve().parents[1] / "assets"

#: Shipped model name -> checkpoint file in :data:`ASSETS`.
SHIPPED = {
    "digits-vit": "digits-vit.safetensors",
    "digits-deit": "digits-deit.safetensors",
}


def shipped_path(name: str) -> Path:
    """The checkpoint file of a shipped model (``"digits-vit"`` or ``"xvit:digits-vit"``)."""
    return ASSETS / SHIPPED[name.removeprefix("xvit:")]


for _name in SHIPPED:
    model_aliases.register(f"xvit:{_name}", str(shipped_path(_name)))
    model_aliases.register(f"xvit:{_name}-hf", f"{HF_TWIN}xvit:{_name}")
