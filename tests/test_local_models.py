"""Local HuggingFace folders keep the preprocessing their image processor was saved with."""

from __future__ import annotations

from pathlib import Path

import pytest

import xvit


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_saved_image_processor_sets_the_preprocessing(tmp_path: Path, kind: str) -> None:
    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        DeiTImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    kw = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    kw.update(image_size=40, patch_size=8)
    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(**kw))
        processor = ViTImageProcessor(size={"height": 40, "width": 40}, image_mean=[0.1] * 3)
    else:
        model = DeiTForImageClassification(DeiTConfig(**kw))
        processor = DeiTImageProcessor(
            size={"height": 50, "width": 50}, crop_size={"height": 40, "width": 40}
        )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    prep = xvit.get_adapter(xvit.load_model(str(tmp_path))).preprocessing
    assert prep.size == (40, 40)  # transformers 5.x keeps sizes in a SizeDict, not a dict
    if kind == "vit":
        assert prep.squash and prep.mean == (0.1, 0.1, 0.1)
    else:
        assert prep.crop_pct == pytest.approx(40 / 50) and not prep.squash
