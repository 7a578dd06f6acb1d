"""The engine's speed switches: compile, channels_last, pinned memory, fused optimizers, SDPA."""

from __future__ import annotations

import math

import pytest
import torch

import encoders
import multimodal as mm
from multimodal import engine
from multimodal.engine.config import TrainConfig
from multimodal.engine.optim import build_optimizer
from multimodal.engine.performance import fused_optimizer, pin_memory
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.test_adversarial import IMAGE
from tests.multimodal.tiny_run import tiny_data

GRAPHS: list[torch.fx.GraphModule] = []


@torch._dynamo.register_backend(name="tf_counting")
def _counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
    GRAPHS.append(gm)
    return gm.forward


@pytest.fixture(scope="module")
def setup():
    return tiny_data(encoders={**tiny_data()[0]["encoders"], "image": IMAGE})


@pytest.mark.slow  # trains, or compiles, for tens of seconds
def test_compile_runs_every_encoder_and_the_fusion_compiled_and_hands_back_an_eager_model(
    setup,
) -> None:
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    keys = set(model.state_dict())
    GRAPHS.clear()
    cfg = train_config(config, epochs=1, max_steps=2, compile=True, compile_backend="tf_counting",
                       channels_last=True)  # fmt: skip
    result = engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)
    assert math.isfinite(result.history[-1]["eval_loss"])
    # dynamo traced at least one graph per compiled module (three encoders and the fusion)
    assert len(GRAPHS) >= 4
    assert any("conv" in str(n.target) for g in GRAPHS for n in g.graph.nodes)
    assert set(model.state_dict()) == keys  # in-place compile: checkpoints keep their keys
    assert all(m._compiled_call_impl is None for m in [*model.encoders.values(), model.fusion])


def test_channels_last_keeps_the_image_encoder_output() -> None:
    enc = encoders.create_encoder("timm_image", **{k: v for k, v in IMAGE.items() if k != "name"})
    enc.eval()
    pixels = {"pixel_values": torch.randn(2, 3, 16, 16)}
    with torch.no_grad():
        before = enc(pixels).tokens
        assert enc.use_channels_last()
        after = enc(pixels).tokens
    conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(before, after, atol=1e-5)
    tabular = encoders.create_encoder("tabular_mlp", numerical=["x"])
    assert not tabular.use_channels_last()


def test_pinned_memory_and_fused_optimizer_default_to_cuda_only(setup) -> None:
    auto, off = TrainConfig(), TrainConfig(pin_memory=False, fused_optimizer=False)
    assert (pin_memory(auto, "cpu"), pin_memory(auto, "cuda"), pin_memory(off, "cuda")) == (
        False,
        True,
        False,
    )
    assert (fused_optimizer(auto, "cpu"), fused_optimizer(auto, "cuda:0")) == (False, True)
    config, _, _, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    assert build_optimizer(model, auto, fused=True).defaults["fused"] is True
    foreach = build_optimizer(model, TrainConfig(optimizer="sgd"), fused=False)
    assert foreach.defaults["foreach"] is True and not foreach.defaults.get("fused")


def test_hf_text_encoders_run_attention_on_sdpa(setup) -> None:
    config, _, _, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    assert model.encoders["text"].model.config._attn_implementation == "sdpa"
