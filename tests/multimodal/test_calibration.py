"""Calibration: ECE and Brier in the metrics, temperature scaling, selective prediction,
reliability diagrams, and a calibrated model that predicts and serves with its temperature."""

from __future__ import annotations

import json
import math

import pytest
import torch

import multimodal as mm
from multimodal.analysis.calibration import (
    calibration_metrics,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    selective_accuracy,
)
from multimodal.cli import main
from multimodal.experiments.config import model_config
from multimodal.modeling.tasks import create_task


def test_ece_and_brier_equal_a_hand_computation() -> None:
    # 4 rows, 2 classes: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.7 (right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 1])
    metrics = create_task("classification", 2).metrics(probs.log(), labels)
    # 15 bins: 0.9 and 0.9 share one (accuracy 0.5), 0.6 and 0.7 one bin each (accuracy 1)
    ece = 2 / 4 * abs(0.9 - 0.5) + 1 / 4 * abs(0.6 - 1) + 1 / 4 * abs(0.7 - 1)
    brier = (0.01 * 2 + 0.81 * 2 + 0.16 * 2 + 0.09 * 2) / 4
    assert metrics["ece"] == pytest.approx(ece, abs=1e-6)
    assert metrics["brier"] == pytest.approx(brier, abs=1e-6)
    assert calibration_metrics(probs.log(), labels)["ece"] == pytest.approx(ece, abs=1e-6)


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model() -> None:
    """Logits of a classifier multiplied by 6: the same predictions, far too sure. The
    fitted temperature is 6 times the one the original logits need, and brings the NLL
    down to theirs at their best temperature, and the ECE with it."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2000,), generator=g)
    honest = torch.randn(2000, 5, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 5)
    over = 6.0 * honest
    temperature = fit_temperature(over, labels)
    before, after = (
        calibration_metrics(over, labels),
        calibration_metrics(over, labels, temperature),
    )
    own = fit_temperature(honest, labels)
    assert temperature == pytest.approx(6 * own, rel=0.01)
    assert after["nll"] < 0.6 * before["nll"] and after["ece"] < 0.5 * before["ece"]
    assert after["nll"] == pytest.approx(calibration_metrics(honest, labels, own)["nll"], rel=1e-3)


def test_selective_accuracy_keeps_the_most_confident_rows() -> None:
    probs = torch.tensor([[0.99, 0.01], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 0])  # right, right, wrong, wrong, by falling confidence
    out = selective_accuracy(probs, labels)
    assert out == {
        "accuracy_at_50": 1.0,
        "accuracy_at_80": pytest.approx(2 / 3),
        "accuracy_at_100": 0.5,
    }


def test_reliability_bins_and_their_png(tmp_path) -> None:
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45]])
    bins = reliability_bins(probs, torch.tensor([0, 0, 0]), bins=10)
    assert bins["share"][9] == pytest.approx(2 / 3) and bins["accuracy"][9] == 0.5
    assert bins["accuracy"][5] == 1.0 and math.isnan(bins["accuracy"][0])
    path = plot_reliability(bins, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_saves_a_model_whose_probabilities_use_the_temperature(tmp_path) -> None:
    from tests.multimodal.tiny_run import tiny_data

    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    with torch.no_grad():
        model.head.net[-1].weight.mul_(50)  # over-confident
    folder = model.save_pretrained(tmp_path / "m")
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["calibrate", "--model", str(folder), "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "calibrated")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "calibrated.calibration.json").read_text())
    assert report["after"]["nll"] <= report["before"]["nll"] and report["temperature"] > 1
    calibrated = mm.MultimodalModel.from_pretrained(tmp_path / "calibrated")
    assert calibrated.head.task.temperature == pytest.approx(report["temperature"])
    view = mm.data.RowView(dsd["test"], spec, "test")
    samples = [view[i] for i in range(6)]
    raw, scaled = model.predict(samples), calibrated.predict(samples)
    assert torch.equal(raw["labels"], scaled["labels"])
    torch.testing.assert_close(scaled["probs"], (raw["logits"] / report["temperature"]).softmax(-1))


def test_calibrate_refuses_a_head_without_classes(tmp_path, capsys) -> None:
    import yaml

    from tests.multimodal.tiny_run import tiny_data

    config, spec, dsd, rows = tiny_data(head={"task": "regression", "num_classes": 1})
    folder = mm.build_model(model_config(config), rows, seed=0).save_pretrained(tmp_path / "m")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["calibrate", "--model", str(folder), "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "calibrated")]) == 2  # fmt: skip
    assert "calibration (temperature scaling" in capsys.readouterr().err
    assert not (tmp_path / "calibrated").exists()


def test_transfer_records_the_adapted_models_target_ece_per_episode() -> None:
    from multimodal.experiments.transfer import transfer
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run()
    config["transfer"] = {**config["transfer"], "source": ["d0"], "target": ["d1"], "episodes": 2}
    config["train"] = {**config["train"], "epochs": 1}
    result = transfer(config).targets["d1"]
    eces = [e.adapted_ece for e in result.episodes]
    assert all(0.0 <= x <= 1.0 for x in eces)
    assert result.adapted_ece == pytest.approx(sum(eces) / 2)
