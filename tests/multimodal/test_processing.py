"""The multimodal processor: raw samples -> Batch with no network, saved without weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import multimodal as mm
from multimodal.data.collate import MultimodalCollator
from multimodal.modeling.processing import MultimodalProcessor

CONFIG = {
    "encoders": {
        "text": {"name": "hf_text", "max_length": 16,
                 "config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 120}},
        "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
        "audio": {"name": "audio_cnn", "channels": [4, 8], "sample_rate": 8000, "n_mels": 16,
                  "n_fft": 128, "hop_length": 64, "max_seconds": 0.25},
        "table": {"name": "tabular_mlp", "numerical": ["x"], "categorical": {"c": ["a", "b"]}, "dim": 8},
    },
    "fusion": {"name": "concat", "dim": 16},
    "head": {"num_classes": 3},
}  # fmt: skip


def _samples() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"text": "a red circle on grey", "image": Image.new("RGB", (40, 20), (200, 10, 10)),
         "audio": {"array": rng.standard_normal(3000).astype(np.float32), "sampling_rate": 16000},
         "table": {"x": 1.5, "c": "b"}, "label": 2},
        {"text": "", "image": None, "audio": {"array": np.zeros(0, np.float32), "sampling_rate": 8000},
         "table": {"x": None, "c": "z"}, "label": 0},
    ]  # fmt: skip


def test_saved_processor_gives_the_models_batch_without_any_weights(tmp_path) -> None:
    model = mm.build_model(
        CONFIG, [{"text": "red circle grey square", "table": {"x": 0.0, "c": "a"}}], seed=0
    )
    processor = model.processor
    assert isinstance(processor, MultimodalProcessor) and processor.modalities == model.modalities
    processor.save_pretrained(tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert "processor.json" in files and any(f.startswith("text/tokenizer/") for f in files)
    assert not [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    loaded = MultimodalProcessor.from_pretrained(tmp_path)
    expected, got = model.preprocess(_samples()), loaded(_samples())
    assert got["present"]["text"].tolist() == [True, False]  # blank text is absent
    assert got["present"]["audio"].tolist() == [True, False]  # a clip of no samples is absent
    assert torch.equal(got["labels"], expected["labels"])
    for m in model.modalities:
        for key, tensor in expected[m].items():
            torch.testing.assert_close(got[m][key], tensor, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="label 3 is out of range"):
        loaded([{"text": "x", "label": 3}])


def test_the_collator_holds_the_processor_not_the_network() -> None:
    model = mm.build_model(CONFIG, [{"text": "red circle", "table": {"x": 0.0, "c": "a"}}], seed=0)
    collator = MultimodalCollator(model, mm.DatasetSpec())
    assert isinstance(collator.processor, MultimodalProcessor)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(collator).values())
