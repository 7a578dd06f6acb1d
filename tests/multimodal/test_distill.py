"""Distillation: the student's loss against the teacher's probabilities goes down, at
temperature -> 0 it is hard-label training on the teacher's labels, the soft task checks
its targets, and multimodal distill saves a classifier."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import multimodal as mm
from multimodal.engine import FitData, fit
from multimodal.engine.evaluate import predict
from multimodal.experiments.config import model_config
from multimodal.experiments.distill import distill, teacher_probabilities
from multimodal.modeling.tasks import SoftClassificationTask
from tests.multimodal.tiny_run import tiny_data

TRAIN = {
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.01,
    "progress": False,
    "warmup_ratio": 0.0,
    "strategy": "head",
}


def _teacher_and_student():
    config, spec, dsd, rows = tiny_data()
    teacher = mm.build_model(model_config(config), rows, seed=1)
    fit(teacher, FitData(spec, dsd["train"]), TRAIN)
    small = {**config, "fusion": {"name": "concat", "dim": 8, "dropout": 0.0}}
    student = mm.build_model(model_config(small), rows, seed=2)
    return spec, dsd, teacher, student


def _soft_loss(student, teacher, ds, spec, temperature: float) -> float:
    """KL(teacher || student): the distillation loss less the targets' own entropy."""
    targets = teacher_probabilities([teacher], ds, spec, temperature)
    logits, _ = predict(student, ds, spec)
    entropy = -(targets * targets.clamp(min=1e-12).log()).sum(-1).mean()
    return float(SoftClassificationTask(targets.shape[-1]).loss(logits, targets) - entropy)


def test_the_students_loss_against_the_teacher_goes_down_and_it_stays_a_classifier() -> None:
    spec, dsd, teacher, student = _teacher_and_student()
    before = _soft_loss(student, teacher, dsd["train"], spec, 2.0)
    result = distill([teacher], student, spec, dsd["train"], mm.TrainConfig(**TRAIN), temperature=2.0,
                     alpha=1.0, unlabelled=dsd["validation"])  # fmt: skip
    after = _soft_loss(student, teacher, dsd["train"], spec, 2.0)
    assert result.steps > 0 and after < 0.5 * before
    assert student.head.task.name == "classification"


def test_at_temperature_zero_distillation_is_training_on_the_teachers_hard_labels() -> None:
    spec, dsd, teacher, student = _teacher_and_student()
    twin = copy.deepcopy(student)
    cfg = mm.TrainConfig(**TRAIN)
    distill([teacher], student, spec, dsd["train"], cfg, temperature=1e-4, alpha=1.0)
    logits, _ = predict(teacher, dsd["train"], spec)
    relabelled = (
        dsd["train"].remove_columns([spec.label]).add_column(spec.label, logits.argmax(-1).tolist())
    )
    assert (
        relabelled[spec.label] != dsd["train"][spec.label]
    )  # the teacher's labels, not the data's
    fit(twin, FitData(spec, relabelled), cfg)
    for (name, a), (_, b) in zip(
        student.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_soft_labels_are_checked_and_the_cli_saves_a_classifier(tmp_path, capsys) -> None:
    import yaml

    task = SoftClassificationTask(3)
    assert torch.equal(
        task.check_labels([2, [0.2, 0.3, 0.5]]), torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    )
    with pytest.raises(ValueError, match="sample 0: soft labels must be probabilities"):
        task.check_labels([[0.5, 0.6, 0.1]])
    spec, dsd, teacher, _ = _teacher_and_student()
    teacher.save_pretrained(tmp_path / "teacher")
    config, *_ = tiny_data()
    config = {**config, "fusion": {"name": "concat", "dim": 8}, "train": {**TRAIN, "epochs": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert mm.cli.main(["distill", "--teacher", str(tmp_path / "teacher"), "--student-config", str(tmp_path / "s.yaml"),
                        "--output-dir", str(tmp_path / "out")]) == 0  # fmt: skip
    saved = mm.MultimodalModel.from_pretrained(tmp_path / "out")
    assert saved.head.task.name == "classification"
    report = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert report["parameters"]["student"] < report["parameters"]["teacher0"]
    assert set(report["test"]) == {"d0", "d1"}
