from __future__ import annotations

import pytest
import torch

from multimodal.modeling.tasks import compute_metrics


def test_classification_metrics() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    m = compute_metrics("classification", logits, labels)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert 0 < m["auroc"] <= 1


def test_single_class_has_no_auroc() -> None:
    m = compute_metrics("classification", torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert "auroc" not in m and "accuracy" in m


def test_multilabel_metrics() -> None:
    logits = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [3.0, 3.0]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    m = compute_metrics("multilabel", logits, labels)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["auroc"] == 1.0


def test_regression_metrics() -> None:
    m = compute_metrics("regression", torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]]))
    assert m["mae"] == pytest.approx(2.0)
    assert m["rmse"] == pytest.approx((5.0) ** 0.5)
