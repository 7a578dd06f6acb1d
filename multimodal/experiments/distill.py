"""Knowledge distillation: a small student trained on a teacher's (or an ensemble's) class
probabilities, over labelled and unlabelled rows.

Each row's target is ``alpha * softmax(teacher logits / T) + (1 - alpha) * one_hot(label)``
where the row has a label, and the teacher's probabilities alone where it has none; the
student (at temperature 1) is trained by cross-entropy against it (Hinton et al. 2015 with
the student's temperature at 1). As T -> 0 the teacher's probabilities become its hard
labels, and distillation is training on them. An ensemble's probabilities are the mean of
its members'. Teacher and student may have different encoders and processors: the
teacher's probabilities are computed once, on the raw rows, before the student trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch

from ..data.spec import DatasetSpec
from ..engine import FitData, FitResult, TrainConfig, fit
from ..engine.evaluate import predict
from ..modeling.tasks import SoftClassificationTask


def teacher_probabilities(
    teachers: Sequence[Any], ds: datasets.Dataset, spec: DatasetSpec, temperature: float,
    batch_size: int = 64,
) -> torch.Tensor:  # fmt: skip
    """[N, C]: the mean over ``teachers`` of softmax(logits / temperature) on every row of
    ``ds``, in row order (temperature 0: the one-hot of each teacher's argmax)."""
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    total = None
    for teacher in teachers:
        teacher.head.task.require_classes("distillation")
        logits, _ = predict(teacher, ds, spec, batch_size)
        if temperature > 0:
            probs = (logits.float() / temperature).softmax(-1)
        else:
            probs = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(teachers)


def distill(
    teachers: Sequence[Any], student: Any, spec: DatasetSpec, train: datasets.Dataset,
    config: TrainConfig, temperature: float = 2.0, alpha: float = 0.5,
    unlabelled: datasets.Dataset | None = None, validation: datasets.Dataset | None = None,
    on_step: Sequence[Callable[[Any], None]] = (),
) -> FitResult:  # fmt: skip
    """Train ``student`` on the teachers' probabilities over ``train`` (labelled) and
    ``unlabelled`` rows; validation, if given, scores it on true labels. ``on_step``: as
    ``fit``'s."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
    if temperature < 0:
        raise ValueError(f"distillation temperature must be >= 0, got {temperature}")
    classes = student.head.num_classes
    student.head.task.require_classes("distillation")
    soft = teacher_probabilities(teachers, train, spec, temperature)
    if soft.shape[-1] != classes:
        raise ValueError(f"the teachers give {soft.shape[-1]} classes, the student has {classes}")
    hard = torch.nn.functional.one_hot(torch.as_tensor(train[spec.label]).long(), classes).float()
    targets = [alpha * soft + (1 - alpha) * hard]
    parts = [train]
    if unlabelled is not None and len(unlabelled):
        targets.append(teacher_probabilities(teachers, unlabelled, spec, temperature))
        parts.append(unlabelled)
    rows = datasets.concatenate_datasets([
        part.remove_columns([c for c in (spec.label,) if c in part.column_names])
            .add_column(spec.label, target.tolist())
        for part, target in zip(parts, targets, strict=True)
    ])  # fmt: skip
    original = student.head.task
    student.head.task = SoftClassificationTask(classes, temperature=original.temperature)
    try:  # no run folder: its best_model/ would be saved with the soft task
        return fit(student, FitData(spec, rows, validation),
                   dataclasses.replace(config, output_dir=None), on_step=on_step)  # fmt: skip
    finally:
        student.head.task = original


def per_domain(
    models: dict[str, Any], ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> dict[str, Any]:
    """Each model's metrics on each domain of ``ds``."""
    from ..data.loading import select_domains
    from ..data.split import Split
    from ..engine import evaluate

    return {d: {name: evaluate(m, select_domains(ds, d), spec, batch_size) for name, m in models.items()}
            for d in Split(ds).domains()}  # fmt: skip
