"""Modality imbalance: utilisation, contribution and the imbalance degree."""

from __future__ import annotations

import math

import pytest

import multimodal as mm
from multimodal.analysis.imbalance import (
    imbalance_from_accuracies,
    majority_rate,
    modality_imbalance,
)
from multimodal.experiments.config import model_config
from tests.multimodal.tiny_run import tiny_data


def test_degree_is_the_spread_of_utilisation_above_chance() -> None:
    out = imbalance_from_accuracies(
        full=0.8, alone={"image": 0.85, "text": 0.2, "audio": 0.5},
        without={"image": 0.3, "text": 0.79, "audio": 0.75}, chance=0.25,
    )  # fmt: skip
    # image alone beats the full model (clipped to 1); text alone is below chance (clipped to 0)
    assert out["utilisation"] == pytest.approx({"image": 1.0, "text": 0.0, "audio": 0.25 / 0.55})
    assert out["imbalance_degree"] == pytest.approx(1.0)
    assert out["contribution"] == pytest.approx({"image": 0.5, "text": 0.01, "audio": 0.05})
    assert (out["dominant"], out["weakest"]) == ("image", "text")
    even = imbalance_from_accuracies(0.8, {"a": 0.6, "b": 0.6}, {"a": 0.7, "b": 0.7}, 0.25)
    assert even["imbalance_degree"] == 0.0
    no_skill = imbalance_from_accuracies(0.25, {"a": 0.3, "b": 0.2}, {"a": 0.2, "b": 0.2}, 0.25)
    assert math.isnan(no_skill["imbalance_degree"]) and math.isnan(no_skill["utilisation"]["a"])
    assert majority_rate([0, 1, 1, 2]) == 0.5


def test_imbalance_needs_two_modalities_and_a_classifier() -> None:
    config, spec, dsd, rows = tiny_data()
    config["encoders"] = {"text": config["encoders"]["text"]}
    with pytest.raises(ValueError, match="two modalities or more"):
        modality_imbalance(mm.build_model(model_config(config), rows, seed=0), dsd["test"], spec)
    config, spec, dsd, rows = tiny_data(head={"task": "regression", "num_classes": 1})
    with pytest.raises(ValueError, match="defined on accuracy"):
        modality_imbalance(mm.build_model(model_config(config), rows, seed=0), dsd["test"], spec)
