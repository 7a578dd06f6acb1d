"""Choosing which target rows to label: k per class under the same budget, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.experiments.transfer import transfer
from multimodal.experiments.transfer.select import SELECTORS, entropy, margin, select_rows
from tests.multimodal.tiny_run import tiny_run

RNG = np.random.default_rng(0)
LABELS = np.repeat(np.arange(4), 25)
PROBS = RNG.dirichlet(np.ones(4), size=100)
FEATURES = RNG.normal(size=(100, 6))


@pytest.mark.parametrize("selector", SELECTORS)
def test_each_selector_takes_k_rows_per_class_and_is_seeded(selector) -> None:
    rows = select_rows(selector, LABELS, 3, seed=7, probs=PROBS, features=FEATURES)
    assert len(rows) == 12 and len(set(rows)) == 12
    assert np.bincount(LABELS[rows], minlength=4).tolist() == [3, 3, 3, 3]
    assert rows == select_rows(selector, LABELS, 3, seed=7, probs=PROBS, features=FEATURES)
    assert rows != select_rows(selector, LABELS, 3, seed=8, probs=PROBS, features=FEATURES)


def test_uncertainty_selectors_take_the_most_uncertain_rows_of_each_class() -> None:
    for c in range(4):
        in_class = np.flatnonzero(LABELS == c)
        by_entropy = set(in_class[np.argsort(-entropy(PROBS[in_class]))[:2]].tolist())
        by_margin = set(in_class[np.argsort(margin(PROBS[in_class]))[:2]].tolist())
        picked_e = set(select_rows("entropy", LABELS, 2, 0, probs=PROBS, pool=1.0)) & set(
            in_class.tolist()
        )
        picked_m = set(select_rows("margin", LABELS, 2, 0, probs=PROBS, pool=1.0)) & set(
            in_class.tolist()
        )
        assert picked_e == by_entropy and picked_m == by_margin


def test_k_center_covers_the_clusters() -> None:
    """Three tight clusters in one class: a 3-center cover takes one row from each."""
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    features = np.concatenate([c + 0.1 * RNG.normal(size=(10, 2)) for c in centers])
    rows = select_rows("kcenter", np.zeros(30, dtype=int), 3, 1, features=features, pool=1.0)
    assert sorted(r // 10 for r in rows) == [0, 1, 2]


def test_selectors_name_what_they_need() -> None:
    with pytest.raises(ValueError, match="needs the source model's probabilities"):
        select_rows("entropy", LABELS, 2, 0)
    with pytest.raises(ValueError, match="must be one of"):
        select_rows("bald", LABELS, 2, 0)


def test_transfer_labels_the_rows_a_selector_picks() -> None:
    config = tiny_run()
    config["transfer"] = {**config["transfer"], "source": ["d0"], "target": ["d1"], "episodes": 2,
                          "select": "margin", "adapt": {"epochs": 2}, "scratch": {"epochs": 2}}  # fmt: skip
    config["train"] = {**config["train"], "epochs": 1}
    chosen = transfer(config).targets["d1"]
    config["transfer"]["select"] = "random"
    drawn = transfer(config).targets["d1"]
    rows = [e.rows for e in chosen.episodes]
    assert all(len(r) == 3 * 4 for r in rows) and rows[0] != rows[1]
    assert rows != [e.rows for e in drawn.episodes]
