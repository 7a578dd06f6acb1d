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
    # far below the teacher's closest top-two logit gap (7.7e-5 here), so every target is one-hot
    distill([teacher], student, spec, dsd["train"], cfg, temperature=1e-7, alpha=1.0)
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


def test_a_transfer_carries_a_student_row_distilled_from_its_source_model(tmp_path) -> None:
    from multimodal.engine import evaluate
    from multimodal.experiments.bench.plan import Unit
    from multimodal.experiments.bench.stats import summarize
    from multimodal.experiments.bench.store import result_rows
    from multimodal.experiments.transfer import TransferReport, transfer_adaptations
    from tests.multimodal.tiny_run import tiny_run

    student = {"encoders": {"tabular": tiny_run()["encoders"]["tabular"]},
               "fusion": {"name": "concat", "dim": 8, "dropout": 0.0}, "temperature": 2.0,
               "unlabelled_targets": True}  # fmt: skip
    config = tiny_run(
        transfer={"episodes": 2, "student": student}, output_dir=str(tmp_path / "run")
    )
    reports = transfer_adaptations(config, ["head", "full"])
    head = reports["head"]
    assert head.student is not None
    mine = TransferReport.from_dict(head.student)
    sizes = mine.distillation
    assert sizes["student_parameters"] < sizes["teacher_parameters"] and sizes["alpha"] == 0.5
    for target, result in head.targets.items():  # the same episodes, every stage the student's
        assert [e.rows for e in mine.targets[target].episodes] == [e.rows for e in result.episodes]
    saved = mm.MultimodalModel.from_pretrained(
        tmp_path / "run" / "student" / "source" / "best_model"
    )
    assert set(saved.modalities) == {"tabular"}
    spec = mm.DatasetSpec.from_dict(config["data"])
    test = mm.data.select_domains(mm.load_dataset(spec)["test"], head.source_domains)
    assert evaluate(saved, test, spec)[mine.metric] == pytest.approx(mine.source)
    assert (tmp_path / "run" / "student" / "report-full.json").is_file()

    unit = Unit(fusion="concat", seed=0, pair=0, k_shot=3, grid=())
    rows = [
        r.to_dict() for r in result_rows("s", unit, {k: r.to_dict() for k, r in reports.items()})
    ]
    assert {r["model"] for r in rows} == {"teacher", "student"} and len(
        rows
    ) == 2 * 2 * 1 * 2  # models x arms x targets x episodes
    entry = next(e for e in summarize(rows) if e["model"] == "student" and e["adaptation"] == "head"
                 and e["target"] == "d1")  # fmt: skip
    by_hand = [s.adapted - t.adapted for s, t in zip(mine.targets["d1"].episodes,
                                                       head.targets["d1"].episodes, strict=True)]  # fmt: skip
    assert entry["adapted_vs_teacher"]["mean"] == pytest.approx(sum(by_hand) / 2)
    assert entry["zero_shot_vs_teacher"]["mean"] == pytest.approx(
        mine.targets["d1"].zero_shot - head.targets["d1"].zero_shot
    )
    assert "p_holm" in entry["adapted_vs_teacher"]


def test_a_student_config_is_checked_like_a_run_config() -> None:
    from multimodal.experiments.config import RunConfig
    from tests.multimodal.tiny_run import tiny_run

    with pytest.raises(ValueError, match="transfer.student"):
        RunConfig.from_dict(tiny_run(transfer={"student": {"temprature": 2}}))
    with pytest.raises(ValueError, match="fusion"):
        RunConfig.from_dict(
            tiny_run(transfer={"student": {"fusion": {"name": "concat", "dimm": 8}}})
        )
