"""Measurements on the synthetic data with a simple model (fixed features + an MLP)."""

from __future__ import annotations

import numpy as np
import pytest

import multimodal as mm
from tests.multimodal.probe import features, fit_and_score

# Each trains for tens of seconds (Ray workers, calibration probes, the GPU script).
pytestmark = pytest.mark.slow

MODALITIES = ["audio", "image", "tabular", "text"]


def _all(ds) -> np.ndarray:
    return np.concatenate([features(ds, m) for m in MODALITIES], 1)


def _source_target_accuracy(shift: float) -> tuple[float, float]:
    ds = mm.make_synthetic(seed=0, samples_per_domain=600, domains=2, shift=shift)
    train = mm.select_domains(ds["train"], "d0")
    source, target = mm.select_domains(ds["test"], "d0"), mm.select_domains(ds["test"], "d1")
    evals = [(_all(source), source["label"]), (_all(target), target["label"])]
    src_acc, tgt_acc = fit_and_score(_all(train), train["label"], evals)
    return src_acc, tgt_acc


def test_domain_gap_at_default_shift() -> None:
    src_acc, tgt_acc = _source_target_accuracy(shift=1.0)
    print(f"domain gap: source {src_acc:.3f}, target {tgt_acc:.3f}, gap {src_acc - tgt_acc:.3f}")
    assert src_acc > 0.85
    assert src_acc - tgt_acc > 0.3


def test_no_gap_without_shift() -> None:
    src_acc, tgt_acc = _source_target_accuracy(shift=0.0)
    assert abs(src_acc - tgt_acc) < 0.1


def test_synergy_needs_every_modality_together() -> None:
    ds = mm.make_synthetic(seed=0, samples_per_domain=1600, domains=1, interaction="synergy")
    train, test = ds["train"], ds["test"]
    chance = 1 / 4
    for m in MODALITIES:
        (acc,) = fit_and_score(
            features(train, m), train["label"], [(features(test, m), test["label"])]
        )
        print(f"synergy, {m} alone: {acc:.3f}")
        assert acc < chance + 0.1
    (acc,) = fit_and_score(_all(train), train["label"], [(_all(test), test["label"])])
    print(f"synergy, all modalities: {acc:.3f}")
    assert acc > chance + 0.3


def test_imbalance_suite_rewards_using_every_modality() -> None:
    """The synthetic-imbalance suite's data: the image is the strongest modality alone, yet
    all three together carry clearly more, so leaning on the image costs accuracy."""
    from multimodal.experiments.bench import load_suite

    suite = load_suite("benchmarks/suites/synthetic-imbalance.yaml")
    options = {**suite.base["data"]["options"], "domains": 1}
    ds = mm.make_synthetic(**options)
    train, test = ds["train"], ds["test"]
    names = options["modalities"]
    alone = {}
    for m in names:
        (alone[m],) = fit_and_score(
            features(train, m), train["label"], [(features(test, m), test["label"])]
        )
    both = lambda d: np.concatenate([features(d, m) for m in names], 1)  # noqa: E731
    (together,) = fit_and_score(both(train), train["label"], [(both(test), test["label"])])
    print(f"imbalance suite: alone {alone}, together {together:.3f}")
    assert max(alone, key=alone.get) == "image"
    assert together > alone["image"] + 0.06
