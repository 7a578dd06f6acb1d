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
from multimodal.engine.performance import (
    channels_last_on,
    compile_on,
    fused_optimizer,
    pin_memory,
    precision,
)
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
    assert result.first_step_s is not None and result.first_step_s > 0  # compilation in it
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


def test_speed_switches_default_on_where_they_keep_cpu_numerics(setup, monkeypatch) -> None:
    auto, off = TrainConfig(), TrainConfig(pin_memory=False, fused_optimizer=False, compile=False,
                                           channels_last=False, mixed_precision="no")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    switches = (pin_memory, compile_on, channels_last_on, precision)
    assert [f(auto, "cpu") for f in switches] == [False, False, False, "no"]
    assert [f(auto, "cuda:0") for f in switches] == [True, True, True, "bf16"]
    assert [f(off, "cuda") for f in switches] == [False, False, False, "no"]
    assert precision(TrainConfig(dp={"epsilon": 8.0}), "cuda") == "no"  # DP trains in fp32
    # torch has the fused kernel on CPU and on CUDA
    assert (fused_optimizer(auto, "cpu"), fused_optimizer(auto, "cuda:0")) == (True, True)
    assert not fused_optimizer(off, "cpu")
    config, _, _, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    assert build_optimizer(model, auto, fused=True).defaults["fused"] is True
    foreach = build_optimizer(model, TrainConfig(optimizer="sgd"), fused=False)
    assert foreach.defaults["foreach"] is True and not foreach.defaults.get("fused")


def test_hf_text_encoders_run_attention_on_sdpa(setup) -> None:
    config, _, _, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    assert model.encoders["text"].model.config._attn_implementation == "sdpa"


def test_the_fused_cpu_step_agrees_with_foreach_to_float_rounding(setup) -> None:
    config, _, _, rows = setup
    models = [mm.build_model(model_config(config), rows, seed=0) for _ in range(2)]
    start = [p.detach().clone() for p in models[0].parameters()]
    optimizers = [
        build_optimizer(m, TrainConfig(lr=0.01), fused=f)
        for m, f in zip(models, (True, False), strict=True)
    ]
    torch.manual_seed(0)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers, strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b, before in zip(models[0].parameters(), models[1].parameters(), start, strict=True):
        assert float((a - before).abs().max()) > 1e-3  # five AdamW steps at lr 0.01 moved it
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
