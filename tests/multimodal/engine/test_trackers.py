"""Trackers through accelerate: a real TensorBoard event file and a local MLflow store."""

from __future__ import annotations

import json

import pytest

import multimodal as mm
from multimodal import engine
from multimodal.engine.trackers import Trackers, check_trackers, flat_config
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.tiny_run import tiny_data


def _needs(*modules: str) -> None:
    for module in modules:
        pytest.importorskip(module, reason="the tracking extra is not installed")


def _event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        events = EventAccumulator(str(file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return scalars


def test_fit_logs_config_steps_and_summary_to_tensorboard_and_mlflow(tmp_path, monkeypatch) -> None:
    _needs("tensorboard", "mlflow")
    from mlflow.tracking import MlflowClient

    # A local file store: MLflow 3 keeps its plain-folder backend only behind an opt-out flag
    # and recommends SQLite, which is one local file as well.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    cfg = train_config(config, output_dir=str(tmp_path / "run"), epochs=2, log_every=1,
                       trackers=["tensorboard", "mlflow"], tracker_project="tiny")  # fmt: skip
    result = engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]

    scalars = _event_scalars(tmp_path / "run" / "logs" / "tiny" / "run")
    assert [s for s, _ in scalars["train_loss"]] == [s for s, _ in losses]
    assert [v for _, v in scalars["train_loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert [v for _, v in scalars["eval_accuracy"]] == pytest.approx([v for _, v in evals])
    assert scalars["final/best_metric"] == [(result.steps, pytest.approx(result.best_metric))]

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(cfg.lr) and run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in losses]
    assert run.data.metrics["final/best_metric"] == pytest.approx(result.best_metric)


def test_tracker_names_are_checked_before_training(tmp_path) -> None:
    with pytest.raises(
        ValueError, match="unknown tracker 'tensorbord'; close matches: \\['tensorboard'\\]"
    ):
        check_trackers(["tensorbord"], tmp_path)
    with pytest.raises(ValueError, match="writes files and the run has no output_dir"):
        check_trackers(["tensorboard"], None)
    with pytest.raises(ValueError, match="'aim' is not installed"):
        Trackers(["aim"], "p", "r", tmp_path)


def test_flat_config_keeps_what_trackers_can_store() -> None:
    flat = flat_config({"train": {"lr": 0.1, "sizes": [1, 2], "seed": None, "uda": {"w": True}}})
    assert flat == {
        "train.lr": 0.1,
        "train.sizes": "[1, 2]",
        "train.seed": "none",
        "train.uda.w": True,
    }


def test_the_benchmark_runner_logs_one_tracker_run_per_unit(tmp_path) -> None:
    from multimodal.experiments.bench import Suite, run_benchmark

    _needs("tensorboard")

    suite = Suite(name="stub", base={"data": {"path": "synthetic"}}, fusions=["concat"], adaptations=["head"], seeds=2,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2], unimodal=False)  # fmt: skip

    def stub(config, adaptations):
        adapted = 0.5 + 0.1 * config["seed"]
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.9, "config_hash": "h", "stage_seconds": {"all": 1.0},
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": adapted, "scratch": 0.5, "transfer_gain": adapted - 0.5,
                                     "forgetting": 0.0, "adapt_samples": 8}}}  # fmt: skip
        return {s: report for s in adaptations}

    run_benchmark(suite, tmp_path, run_unit=stub, progress=False, trackers=["tensorboard"])
    runs = sorted((tmp_path / "logs" / "stub").iterdir())
    assert [r.name.split("-")[:2] for r in runs] == [["concat", "seed0"], ["concat", "seed1"]]
    adapted = [_event_scalars(r)["head/d1/adapted"] for r in runs]
    assert adapted == [[(0, pytest.approx(0.5))], [(0, pytest.approx(0.6))]]
