"""Behaviour specific to the wider fusion zoo."""

from __future__ import annotations

import pytest
import torch

import fusion
import multimodal as mm
from tests.conftest import acceptance_batch, four_modality_config

DIMS = {"a": 6, "b": 4, "c": 5}


def _inputs(batch: int = 3):
    t = {m: torch.randn(batch, 2, d) for m, d in DIMS.items()}
    k = {m: torch.ones(batch, 2, dtype=torch.bool) for m in DIMS}
    return t, k


def test_tensor_fusion_refuses_a_huge_product_and_suggests_low_rank() -> None:
    dims = {f"m{i}": 8 for i in range(6)}
    with pytest.raises(ValueError, match="low_rank_tensor"):
        fusion.create_fusion("tensor", dims, 16, modality_dim=16)
    fusion.create_fusion("low_rank_tensor", dims, 16, modality_dim=16)  # linear in M: fine


def test_late_fusion_weights_present_modalities_only() -> None:
    f = fusion.create_fusion("late", DIMS, 8).eval()
    t, k = _inputs()
    k["a"][0] = False
    weights = f(t, k).info["modality_weights"]
    assert torch.allclose(weights.sum(1), torch.ones(3))
    assert weights[0, 0] == 0 and (weights[1:, 0] > 0).all()
    uniform = fusion.create_fusion("late", DIMS, 8, weighting="uniform").eval()
    assert torch.allclose(uniform(t, k).info["modality_weights"][1], torch.full((3,), 1 / 3))


def test_late_fusion_model_combines_head_logits() -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config("late"), samples).eval()
    batch = model.preprocess(samples)
    out = model(batch)
    tokens, masks = model.encode(batch)
    info = model.fusion(tokens, masks).info
    expected = sum(
        info["modality_weights"][:, i : i + 1] * model.head(v)
        for i, v in enumerate(info["modality_vectors"].values())
    )
    assert torch.allclose(out.logits, expected, atol=1e-6)


def test_film_identity_at_start_and_condition_choice() -> None:
    f = fusion.create_fusion("film", DIMS, 8, condition="b")
    assert f.condition == "b" and f.others == ["a", "c"]
    with pytest.raises(ValueError, match="condition must be one of"):
        fusion.create_fusion("film", DIMS, 8, condition="z")


def test_gated_reports_gates_over_present_modalities() -> None:
    f = fusion.create_fusion("gated", DIMS, 8).eval()
    t, k = _inputs()
    k["c"][1] = False
    gates = f(t, k).info["gates"]
    assert torch.allclose(gates.sum(1), torch.ones(3)) and gates[1, 2] == 0


def test_bottleneck_modalities_talk_only_through_the_bottleneck() -> None:
    f = fusion.create_fusion("bottleneck", DIMS, 8, num_heads=2, depth=1, dropout=0.0).eval()
    t, k = _inputs(1)
    base = f(t, k).fused
    t2 = {**t, "a": t["a"] + 1.0}
    assert not torch.allclose(base, f(t2, k).fused), "a change in one modality reaches the output"
