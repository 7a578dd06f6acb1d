"""Fewer labels: pseudo-labelling and FixMatch on the unlabelled target rows, and the input
augmentation FixMatch needs (``train.augment``)."""

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


def test_fixmatch_labels_the_strong_view_from_the_weak_one_and_drops_unsure_rows() -> None:
    objective = create_uda_objective("fixmatch", 8, 3, threshold=0.9)
    weak = torch.tensor([[4.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 5.0], [0.2, 0.1, 0.0]])
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = objective(None, None, None, strong, 0.5, weak)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])  # weak confidence 0.965, 0.45, 0.987, 0.37
    expected = (
        F.cross_entropy(strong, torch.tensor([0, 0, 2, 0]), reduction="none") * keep
    ).sum() / 4
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert strong.grad[[1, 3]].abs().sum() == 0 and strong.grad[[0, 2]].abs().sum() > 0
    with pytest.raises(ValueError, match="weak view"):
        objective(None, None, None, strong, 0.5)


def test_an_augmented_fit_reads_raw_inputs_and_repeats_under_its_seed(setup) -> None:  # noqa: F811
    config, spec, dsd, _ = setup
    data = engine.FitData(spec, dsd["train"], dsd["validation"])
    cfg = train_config(config, strategy="head", max_steps=4, augment="strong")
    first, second = _model(setup), _model(setup)
    result = engine.fit(first, data, cfg)
    engine.fit(second, data, cfg)
    plain = _model(setup)
    assert engine.fit(plain, data, cfg.replace(augment="none")).used_feature_cache
    assert not result.used_feature_cache
    weights = [dict(m.named_parameters()) for m in (first, second, plain)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.parametrize("arm_name", ["pseudo_label", "fixmatch"])
@pytest.mark.parametrize("name", fusion.list_fusions())
def test_every_fusion_takes_a_self_training_step(setup, name, arm_name) -> None:  # noqa: F811
    config, spec, dsd, _ = setup
    arm = create_adaptation(arm_name)
    keys = arm.overrides(RunConfig.from_dict(config).transfer)
    assert keys["uda"] == arm_name and keys["strategy"] == "head"
    assert keys.get("augment", "none") == ("weak" if arm_name == "fixmatch" else "none")
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
