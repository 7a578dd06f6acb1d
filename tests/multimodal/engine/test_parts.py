"""Unit tests of the engine's parts, each on its own (fit's end-to-end tests are elsewhere)."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from multimodal.core.io import CorruptCheckpointError
from multimodal.engine.config import TrainConfig
from multimodal.engine.objective import Objective
from multimodal.engine.recorder import RunRecorder
from multimodal.engine.state import STATE_NAME, TrainState
from multimodal.engine.step import NonFiniteTrainingError, TrainStep
from multimodal.engine.tracking import BEST_STATE_NAME, BestTracker
from multimodal.modeling.heads import Head


def test_train_state_round_trips_through_its_json(tmp_path) -> None:
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, best=0.5, best_step=6, bad_evals=1,
                       history=[{"step": 6, "eval_accuracy": 0.5}], skipped_steps=2)  # fmt: skip
    state.save(tmp_path)
    assert TrainState.load(tmp_path) == state
    # a checkpoint written before skipped_steps existed still loads
    record = json.loads((tmp_path / STATE_NAME).read_text())
    del record["skipped_steps"]
    (tmp_path / STATE_NAME).write_text(json.dumps(record))
    assert TrainState.load(tmp_path).skipped_steps == 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))
        self.head = SimpleNamespace(task=SimpleNamespace(name="classification"))


def test_best_tracker_keeps_the_best_weights_and_stops_after_patience(tmp_path) -> None:
    model, state = _Tiny(), TrainState()
    tracker = BestTracker("accuracy", min_delta=0.01, patience=2, run_dir=tmp_path)
    for step, (accuracy, value) in enumerate([(0.5, 1.0), (0.8, 2.0), (0.805, 3.0), (0.7, 4.0)]):
        state.step = step
        model.weight.data.fill_(value)
        tracker.update({"accuracy": accuracy}, state, model)
    # 0.805 is not better than 0.8 by more than min_delta: two evaluations without a gain
    assert (state.best, state.best_step, state.bad_evals, state.stopped) == (0.8, 1, 2, True)
    tracker.restore(model)
    assert model.weight.tolist() == [2.0, 2.0]
    # A checkpoint carries its own copy (save_checkpoint copies the run's file into it); a
    # resume reads that one, which a later improvement cannot have overwritten.
    checkpoint = tmp_path / "checkpoints" / "step_3"
    checkpoint.mkdir(parents=True)
    shutil.copyfile(tmp_path / BEST_STATE_NAME, checkpoint / BEST_STATE_NAME)
    model.weight.data.fill_(9.0)
    tracker.update({"accuracy": 0.99}, state, model)  # after the checkpoint, then lost
    resumed = BestTracker("accuracy", run_dir=tmp_path)
    resumed.resume(state, checkpoint)
    assert resumed.weights["weight"].tolist() == [2.0, 2.0]
    (checkpoint / BEST_STATE_NAME).unlink()
    with pytest.raises(CorruptCheckpointError, match="has no best_state.safetensors"):
        resumed.resume(state, checkpoint)


def test_best_tracker_minimises_loss_like_metrics_and_names_a_missing_one() -> None:
    model, state = _Tiny(), TrainState()
    tracker = BestTracker("rmse")
    tracker.update({"rmse": 2.0}, state, model)
    tracker.update({"rmse": 1.0}, state, model)
    assert state.best == 1.0 and state.bad_evals == 0
    with pytest.raises(ValueError, match="metric 'rmse' is not computed"):
        tracker.update({"accuracy": 1.0}, state, model)


class _Model(nn.Module):
    """A model whose loss is a known number per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch: dict) -> SimpleNamespace:
        loss = self.scale * batch["x"]
        return SimpleNamespace(loss=loss, fused=batch["x"].view(1, 1), logits=batch["x"].view(1, 1))


def test_objective_sums_every_term_with_its_weight(monkeypatch) -> None:
    model = _Model()
    clean = {"x": torch.tensor(2.0)}
    attacked = {"x": torch.tensor(5.0)}
    monkeypatch.setattr("multimodal.engine.objective.perturb", lambda *a, **k: attacked)
    adapter = lambda fs, ft, ls, lt, progress: (ft - fs).sum() * progress  # noqa: E731
    targets = iter([{"x": torch.tensor(3.0)}])
    objective = Objective(model, model, {"method": "fgsm", "budgets": None, "steps": 1, "weight": 0.25},
                          adapter, uda_weight=2.0, target_batches=targets)  # fmt: skip
    _, terms = objective(clean, progress=0.5)
    assert terms.clean.item() == 2.0 and terms.adversarial.item() == 5.0
    assert terms.uda.item() == pytest.approx(0.5)  # (3 - 2) * 0.5
    assert terms.total.item() == pytest.approx(0.75 * 2.0 + 0.25 * 5.0 + 2.0 * 0.5)
    plain = Objective(model, model)
    assert plain(clean, 0.0)[1].total.item() == 2.0
    with pytest.raises(ValueError, match="needs target batches"):
        Objective(model, model, uda=adapter)


def _step(max_nonfinite: int) -> tuple[TrainStep, _Model]:
    from accelerate import Accelerator

    model = _Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return TrainStep(
        accelerator, model, optimizer, scheduler, Objective(model, model), 1.0, max_nonfinite
    ), model


def test_train_step_updates_on_a_finite_loss_and_skips_a_non_finite_one(tmp_path) -> None:
    step, model = _step(max_nonfinite=2)
    outcome = step({"x": torch.tensor(2.0)}, 0.0)
    assert outcome.synced and not outcome.skipped
    assert model.scale.item() == pytest.approx(1.0 - 0.1 * 1.0)  # gradient 2, clipped to norm 1
    before = model.scale.item()
    outcome = step({"x": torch.tensor(math.nan)}, 0.0)
    assert outcome.skipped and model.scale.item() == before
    state = TrainState(step=4)
    step.count_skip(state, tmp_path)
    assert state.skipped_steps == 1
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive non-finite steps after step 4"):
        step.count_skip(state, tmp_path)


def test_run_recorder_writes_config_environment_and_metrics(tmp_path) -> None:
    from accelerate import Accelerator

    cfg = TrainConfig(output_dir=str(tmp_path), tensorboard=False)
    recorder = RunRecorder(Accelerator(cpu=True), cfg)
    recorder.start({"trainable": 3, "total": 5}, TrainState())
    recorder.log({"step": 1, "train_loss": 0.5})
    at_checkpoint = recorder.position()
    recorder.log({"step": 2, "train_loss": 0.4})  # written after the checkpoint, then killed
    recorder.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[:2] == [{"step": 0, "strategy": "full", "trainable_parameters": 3, "total_parameters": 5},
                         {"step": 1, "train_loss": 0.5}]  # fmt: skip
    resumed = RunRecorder(Accelerator(cpu=True), cfg)
    resumed.start({"trainable": 3, "total": 5}, TrainState(step=1, log_bytes=at_checkpoint))
    resumed.log({"step": 2, "train_loss": 0.45})
    resumed.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2] and lines[2]["train_loss"] == 0.45
    assert json.loads((tmp_path / "config.json").read_text())["output_dir"] == str(tmp_path)
    env = json.loads((tmp_path / "environment.json").read_text())
    assert len(env["train_config_hash"]) == 12 and env["processes"] == 1


def test_train_config_stages_derive_by_replace() -> None:
    base = TrainConfig.from_dict({"lr": "3e-4", "epochs": 4})
    assert base.lr == 3e-4  # YAML 1.1 leaves 3e-4 a string
    stage = base.replace(epochs=2, patience=None, lr="1e-3")
    assert (stage.epochs, stage.lr, stage.patience, base.epochs) == (2, 1e-3, None, 4)
    with pytest.raises(ValueError, match="unknown key 'train.lrr'; close matches: \\['lr'"):
        base.replace(lrr=1.0)


@pytest.mark.parametrize(
    ("task", "labels", "error"),
    [
        ("classification", [1, 3], "sample 1: label 3 is out of range \\[0, 3\\)"),
        ("classification", [1.5], "sample 0: expected an integer class label"),
        ("multilabel", [[0, 1, 2]], "sample 0: multilabel targets must be 0 or 1"),
        ("regression", [[1.0, 2.0]], "sample 0: expected 3 target values, got 2"),
        ("regression", [None], "sample 0: label is missing"),
    ],
)
def test_each_task_checks_its_labels_naming_the_sample(task, labels, error) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        Head(4, task=task, num_classes=3).check_labels(labels)


def test_tasks_own_their_outputs_metrics_and_default_metric() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    classification = Head(4, task="classification", num_classes=3).task
    out = classification.outputs(logits)
    assert out["labels"].tolist() == [0, 1] and torch.allclose(out["probs"].sum(-1), torch.ones(2))
    assert classification.metrics(logits, torch.tensor([0, 2]))["accuracy"] == 0.5
    assert classification.default_metric == "accuracy"
    regression = Head(4, task="regression", num_classes=1).task
    assert regression.default_metric == "rmse"
    assert regression.per_sample_loss(
        torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    ).tolist() == [[1.0], [9.0]]
    multilabel = Head(4, task="multilabel", num_classes=3).task
    assert multilabel.outputs(logits)["labels"].tolist() == [[1, 0, 0], [0, 1, 0]]


def test_only_a_task_with_one_class_per_row_gives_class_probabilities() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    classification = Head(4, task="classification", num_classes=3).task
    assert classification.exclusive_classes
    assert torch.allclose(classification.class_probabilities(logits), logits.softmax(-1))
    for name, n in (("regression", 1), ("multilabel", 3)):
        task = Head(4, task=name, num_classes=n).task
        assert not task.exclusive_classes
        with pytest.raises(ValueError, match=f"tent needs one class per row.*{name}"):
            task.require_classes("tent")


@pytest.mark.parametrize("method", ["cdan", "entropy", "pseudo_label", "fixmatch"])
def test_an_objective_reading_class_probabilities_refuses_a_regression_head(method) -> None:
    from multimodal import engine
    from multimodal.modeling.uda import uda_needs_classes
    from tests.multimodal.tiny_run import tiny_data

    assert uda_needs_classes(method) and not uda_needs_classes("coral")
    config, spec, dsd, rows = tiny_data(head={"task": "regression", "num_classes": 1})
    import multimodal as mm
    from multimodal.experiments.config import model_config, train_config

    model = mm.build_model(model_config(config), rows, seed=0)
    data = engine.FitData(spec, dsd["train"], unlabelled=dsd["validation"])
    with pytest.raises(ValueError, match=f"train.uda={method} needs one class per row"):
        engine.fit(model, data, train_config(config, uda=method, max_steps=1))


def test_a_spec_with_the_retired_task_key_loads_with_a_warning() -> None:
    from multimodal.data import DatasetSpec

    with pytest.warns(FutureWarning, match="data.task is not read"):
        spec = DatasetSpec.from_dict({"path": "synthetic", "task": "regression"})
    assert not hasattr(spec, "task")
