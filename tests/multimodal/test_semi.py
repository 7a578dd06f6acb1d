"""Fewer labels: pseudo-labelling on the unlabelled target rows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fusion
from multimodal import engine
from multimodal.experiments.adaptations import AdaptContext, create_adaptation
from multimodal.experiments.config import RunConfig, train_config
from multimodal.modeling.uda import create_uda_objective
from tests.multimodal.test_forgetting import _model, setup  # noqa: F401 - the shared fixture


def test_the_mask_drops_rows_below_the_threshold_and_the_loss_averages_over_all() -> None:
    objective = create_uda_objective("pseudo_label", 8, 3, threshold=0.9)
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 5.0], [0.2, 0.1, 0.0]])
    keep, labels = objective.mask(logits)
    confidence = logits.softmax(-1).max(-1).values  # 0.965, 0.45, 0.987, 0.37
    assert keep.tolist() == (confidence >= 0.9).tolist() == [True, False, True, False]
    assert labels.tolist() == [0, 0, 2, 0]
    expected = (F.cross_entropy(logits, labels, reduction="none") * keep.float()).sum() / 4
    assert objective(None, None, None, logits, 0.5).item() == pytest.approx(expected.item())
    assert (
        create_uda_objective("pseudo_label", 8, 3, threshold=1.0)(
            None, None, None, logits, 0.5
        ).item()
        == 0.0
    )


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_every_fusion_takes_a_pseudo_label_step(setup, name) -> None:  # noqa: F811
    config, spec, dsd, _ = setup
    arm = create_adaptation("pseudo_label")
    keys = arm.overrides(RunConfig.from_dict(config).transfer)
    assert keys["uda"] == "pseudo_label" and keys["strategy"] == "head"
    data, used = arm.data(
        AdaptContext(engine.FitData(spec, dsd["train"]), dsd["validation"], list(range(8)))
    )
    assert used == 8 and data.unlabelled is not None and data.train_indices == list(range(8))
    small = {"cross_attention": {"num_heads": 2}, "moe": {"num_experts": 2}, "bottleneck": {"num_heads": 2},
             "transformer": {"num_heads": 2}}.get(name, {})  # fmt: skip
    result = engine.fit(
        _model(setup, name, **small),
        data,
        train_config(config, **{**keys, "max_steps": 2, "log_every": 1}),
    )
    assert result.steps == 2 and all(
        math.isfinite(h["eval_loss"]) for h in result.history if "eval_loss" in h
    )
