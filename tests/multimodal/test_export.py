from __future__ import annotations

import numpy as np
import pytest
import torch

import multimodal as mm
from multimodal.deploy.export import OnnxModel, export_onnx
from multimodal.experiments.config import model_config
from tests.multimodal.test_adversarial import AUDIO, IMAGE
from tests.multimodal.tiny_run import tiny_data, tiny_run

TOLERANCE = 1e-4  # max |logit difference|, onnxruntime against PyTorch, float32
FUSIONS = {"concat": {}, "cross_attention": {"depth": 1, "num_heads": 2}, "moe": {"num_experts": 4}}


@pytest.fixture(scope="module")
def data():
    _, spec, _, rows = tiny_data("test")
    return spec, rows


# concat in the fast tier; the attention and mixture graphs export for tens of seconds.
@pytest.mark.parametrize(
    "fusion", [f if f == "concat" else pytest.param(f, marks=pytest.mark.slow) for f in FUSIONS]
)
def test_onnxruntime_matches_pytorch(fusion, data, tmp_path) -> None:
    spec, rows = data
    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE, "audio": AUDIO},
                      fusion={"name": fusion, "dim": 16, **FUSIONS[fusion]})  # fmt: skip
    model = mm.build_model(model_config(config), rows, seed=0).eval()
    for name, p in model.named_parameters():
        if "router" in name:  # an untrained router ties every expert; ties break differently
            torch.nn.init.normal_(p)
    export_onnx(model, tmp_path)
    weights = [
        p.name for p in tmp_path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth")
    ]
    assert weights == []  # the graph holds the weights; processors/ holds JSON and a tokenizer
    onnx_model = OnnxModel(tmp_path)
    inputs = {i.name: i.shape for i in onnx_model.session.get_inputs()}
    assert inputs["text.input_ids"][0] == "batch" and isinstance(
        inputs["text.input_ids"][1], str
    )  # dynamic
    # Other batch sizes and text lengths than the export's, with modalities missing.
    for batch in (rows[:1], rows[1:8], rows[8:13]):
        samples = [dict(r) for r in batch]
        samples[0]["audio"] = None
        if len(samples) > 2:
            samples[1]["text"] = "a much longer text " * 10
            samples[2]["image"] = None
        expected = model.predict(samples)["logits"].numpy()
        got = onnx_model.predict(samples)
        assert got["logits"].shape == expected.shape
        assert np.abs(got["logits"] - expected).max() < TOLERANCE
        assert (got["labels"] == expected.argmax(-1)).all()
