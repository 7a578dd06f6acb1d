"""train.batch_size auto: the probe finds the largest batch under a memory cap (an
out-of-memory error injected past it), keeps an effective batch through gradient
accumulation, and leaves the model as it was."""

from __future__ import annotations

import math

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.engine.batch_size import probe_step
from multimodal.experiments.config import model_config
from tests.multimodal.tiny_run import tiny_data

TRAIN = {"epochs": 1, "lr": 0.01, "progress": False, "warmup_ratio": 0.0, "feature_cache": "off"}


def _capped(model: mm.MultimodalModel, cap: int) -> list[int]:
    """Batches of more than ``cap`` rows raise CUDA's out-of-memory error in the fusion's
    forward; returns the batch sizes the model saw."""
    seen: list[int] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        rows = len(next(iter(args[0].values())))
        seen.append(rows)
        if rows > cap:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {rows} MiB (cap {cap})."
            )

    model.fusion.register_forward_pre_hook(hook)
    return seen


@pytest.fixture(scope="module")
def setup():
    return tiny_data()


def test_auto_finds_the_largest_batch_under_a_memory_cap(setup) -> None:
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    seen = _capped(model, cap=20)
    cfg = mm.TrainConfig(**TRAIN, batch_size="auto", max_batch_size=64)
    result = engine.fit(model, engine.FitData(spec, dsd["train"]), cfg)
    assert seen[:3] == [64, 32, 16]  # the probe: 64 and 32 run out of memory, 16 fits
    assert result.batch_size == 16 and result.grad_accum == 1
    assert max(seen[3:]) == 16 and result.steps == math.ceil(len(dsd["train"]) / 16)
    # the loop's clock: the first step, and the wait for batches, inside the loop's time
    assert 0 < result.first_step_s and 0 < result.data_wait_s < sum(result.epoch_seconds)


def test_an_effective_batch_is_kept_through_gradient_accumulation(setup) -> None:
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    seen = _capped(model, cap=20)
    cfg = mm.TrainConfig(**TRAIN, batch_size="auto", max_batch_size=64, effective_batch_size=40)
    result = engine.fit(model, engine.FitData(spec, dsd["train"]), cfg)
    assert seen[:2] == [40, 20]  # the probe starts at the effective batch
    assert (result.batch_size, result.grad_accum) == (20, 2)
    assert result.steps == math.ceil(math.ceil(len(dsd["train"]) / 20) / 2)


def test_the_probe_leaves_weights_and_statistics_as_they_were(setup) -> None:
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe_step(
        model, dsd["train"], engine.FitData(spec, dsd["train"]), mm.TrainConfig(lr=0.5), 16, "no"
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_auto_is_refused_where_a_fixed_batch_is_needed() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        engine.privacy.dp_settings(mm.TrainConfig(batch_size="auto", dp={"epsilon": 8.0}), False)
    with pytest.raises(ValueError, match="effective_batch_size goes with batch_size: auto"):
        engine.batch_size.resolve_batch_size(
            None, None, mm.TrainConfig(effective_batch_size=64), "cpu", "no"
        )
    with pytest.raises(Exception, match="batch_size"):
        mm.TrainConfig.from_dict({"batch_size": "big"})
