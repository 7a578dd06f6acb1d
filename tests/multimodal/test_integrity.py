"""Nothing lost, nothing forged: what a command may delete or replace, who may write a run
folder, what a resume may change, and which files a load must have checked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import multimodal as mm
from multimodal.cli import main
from multimodal.core.io import UnverifiedFolderError, file_checksums
from multimodal.core.run_folder import RunExistsError, RunFolder, RunLockedError
from multimodal.experiments.runs import train_run
from tests.multimodal.tiny_run import tiny_run


def _config(tmp_path: Path) -> Path:
    config = tiny_run(train={"epochs": 2, "save_every": 4})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished training run (its folder as `multimodal train` leaves it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train_run(tiny_run(train={"epochs": 2, "save_every": 4}), run)
    return run


def _snapshot(folder: Path) -> dict[str, str]:
    return file_checksums(folder)


def test_calibrate_into_a_folder_that_holds_anything_is_refused_and_leaves_it_as_it_was(
    finished, tmp_path, capsys
) -> None:
    config = _config(tmp_path)
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = {p: _snapshot(p) for p in (finished, user)}
    for out in (finished, user, RunFolder(finished).best_model):
        code = main(
            ["calibrate", "--model", str(finished), "--config", str(config), "--out", str(out)]
        )
        assert code == 2 and "already exist" in capsys.readouterr().err
    assert {p: _snapshot(p) for p in (finished, user)} == before
    # --overwrite replaces an earlier saved model, never a folder that holds anything else
    code = main(
        [
            "calibrate",
            "--model",
            str(finished),
            "--config",
            str(config),
            "--out",
            str(user),
            "--overwrite",
        ]
    )
    assert (
        code == 2 and "would delete" in capsys.readouterr().err and _snapshot(user) == before[user]
    )
    copy = tmp_path / "calibrated"
    assert (
        main(["calibrate", "--model", str(finished), "--config", str(config), "--out", str(copy)])
        == 0
    )
    assert main(["calibrate", "--model", str(finished), "--config", str(config), "--out", str(copy),
                 "--overwrite"]) == 0  # fmt: skip


def test_training_into_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path) -> None:
    run = tmp_path / "run"
    first = train_run(tiny_run(train={"epochs": 2, "save_every": 4}), run)
    before = _snapshot(run)
    with pytest.raises(RunExistsError, match="already holds a run.*--overwrite"):
        train_run(tiny_run(train={"epochs": 2, "save_every": 4}, seed=1), run)
    assert _snapshot(run) == before
    (run / "notes.txt").write_text("kept")
    second = train_run(tiny_run(train={"epochs": 1}, seed=1), run, overwrite=True)
    assert second["steps"] < first["steps"] and (run / "notes.txt").read_text() == "kept"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # a fresh log, not the old one appended to
    assert all(
        int(p.name.split("_")[1]) <= second["steps"] for p in RunFolder(run).checkpoints.iterdir()
    )


def test_a_second_training_into_a_locked_folder_is_refused(tmp_path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from multimodal.core.run_folder import RunFolder
        with RunFolder({str(run)!r}).locked():
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="being written by another run"):
            train_run(tiny_run(), run)
        assert not RunFolder(run).run_config.exists()  # refused before it wrote anything
    finally:
        holder.kill()
        holder.wait()
    train_run(tiny_run(train={"epochs": 1}), run)  # released with its process


def test_a_resume_refuses_a_changed_key_and_takes_a_longer_run(tmp_path, caplog) -> None:
    from multimodal.core.config import ConfigError
    from multimodal.engine.config import RESUMABLE

    run = tmp_path / "run"
    train_run(tiny_run(train={"epochs": 2, "save_every": 4}), run)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.01 -> 0\.5.*may change"):
        train_run(tiny_run(train={"epochs": 2, "lr": 0.5}), run, resume_from="latest")
    assert "epochs" in RESUMABLE and "lr" not in RESUMABLE
    longer = train_run(tiny_run(train={"epochs": 4, "save_every": 4}), run, resume_from="latest")
    history = [h["step"] for h in longer["history"]]
    assert history == sorted(set(history))  # no evaluation repeated at the resumed step
    empty = tmp_path / "empty"
    with caplog.at_level(logging.WARNING):
        train_run(tiny_run(train={"epochs": 1}), empty, resume_from="latest")
    assert "no complete checkpoint" in caplog.text


def test_a_checksums_file_that_leaves_files_out_is_refused(finished, tmp_path, caplog) -> None:
    import shutil

    model = shutil.copytree(RunFolder(finished).best_model, tmp_path / "model")
    (model / "checksums.json").write_text('{"sha256": {}}')
    weights = load_file(str(model / "model.safetensors"))
    head = [k for k in weights if k.startswith("head.")][-1]
    weights[head] = -weights[head]
    save_file(weights, str(model / "model.safetensors"))
    with pytest.raises(UnverifiedFolderError, match="does not list.*model.safetensors"):
        mm.MultimodalModel.from_pretrained(model)
    with caplog.at_level(logging.WARNING):
        mm.MultimodalModel.from_pretrained(model, allow_unverified=True)
    assert "UNVERIFIED" in caplog.text
    listed = json.loads((RunFolder(finished).best_model / "checksums.json").read_text())["sha256"]
    assert "config.json" in listed and "model.safetensors" in listed


def test_an_onnx_export_that_disagrees_with_the_model_is_refused_and_not_written(
    tmp_path, monkeypatch
) -> None:
    """The moe export's agreement to 1e-4 (routing away from uniform) is
    test_export.py::test_onnxruntime_matches_pytorch[moe]; here, what a disagreement does."""
    from multimodal.deploy import export
    from multimodal.deploy.export import ExportMismatchError, export_onnx
    from multimodal.experiments.config import model_config
    from tests.multimodal.tiny_run import tiny_data

    config, _, _, rows = tiny_data()
    config["fusion"] = {"name": "moe", "dim": 16, "num_experts": 4, "dropout": 0.0}
    model = mm.build_model(model_config(config), rows, seed=0).eval()
    traced: list[str] = []

    def write_graph(graph: object, args: tuple, path: str, **kwargs: object) -> None:
        traced.append(path)  # the graph is not what is under test: any file stands in for it
        Path(path).write_text("graph")

    monkeypatch.setattr(export.torch.onnx, "export", write_graph)
    monkeypatch.setattr(export, "export_difference", lambda *a: 0.75)
    with pytest.raises(ExportMismatchError, match="differ .* by up to 0.75"):
        export_onnx(model, tmp_path / "bad")
    assert len(traced) == 1 and not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left either
    monkeypatch.setattr(export, "export_difference", lambda *a: 5e-5)
    assert export_onnx(model, tmp_path / "good") == tmp_path / "good"
    assert (tmp_path / "good" / export.ONNX_NAME).read_text() == "graph"
