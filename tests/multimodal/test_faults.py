"""Numerical faults, checkpoint integrity, full disks and safe loading in the engine."""

from __future__ import annotations

import errno
import json
import math
import shutil

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.core.io import CorruptCheckpointError, verify_checkpoint
from multimodal.engine.checkpoint import resolve_resume
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.tiny_run import tiny_data


@pytest.fixture(scope="module")
def setup():
    return tiny_data()


def _model(setup):
    config, spec, dsd, rows = setup
    return mm.build_model(model_config(config), rows, seed=0)


def _fit(setup, model, tmp_path=None, **train):
    config, spec, dsd, _ = setup
    cfg = train_config(config, output_dir=str(tmp_path) if tmp_path else None, **train)
    return engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)


def _poison_loss(model, bad_calls: set[int]) -> list[int]:
    """Make the head's loss NaN on the given training calls (0-based); returns the call log."""
    calls: list[int] = []
    loss = model.head.loss

    def poisoned(logits, labels):
        value = loss(logits, labels)
        if model.training:
            calls.append(len(calls))
            if calls[-1] in bad_calls:
                return value * float("nan")
        return value

    model.head.loss = poisoned
    return calls


def test_non_finite_steps_are_skipped_counted_and_weights_stay_finite(setup, tmp_path) -> None:
    model = _model(setup)
    _poison_loss(model, {2, 3, 7})
    result = _fit(setup, model, tmp_path, max_steps=12, log_every=1)
    assert result.skipped_steps == 3
    assert result.steps == 12  # skipped updates do not count as steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "train_loss" in r][-1] == 3


def test_consecutive_non_finite_steps_stop_the_run_naming_step_and_checkpoint(
    setup, tmp_path
) -> None:
    model = _model(setup)
    _poison_loss(model, set(range(6, 1000)))
    with pytest.raises(engine.NonFiniteTrainingError) as err:
        _fit(setup, model, tmp_path, max_steps=40, save_every=3, max_nonfinite_steps=4)
    message = str(err.value)
    assert "4 consecutive non-finite steps after step 6" in message
    assert str(tmp_path / "checkpoints" / "step_6") in message


def test_non_finite_gradient_is_caught_even_when_the_loss_is_finite(setup) -> None:
    model = _model(setup)
    hook_calls = []

    def inf_grad(grad):
        hook_calls.append(1)
        return grad * float("inf") if len(hook_calls) == 2 else grad

    next(model.head.parameters()).register_hook(inf_grad)
    result = _fit(setup, model, max_steps=4)
    assert result.skipped_steps == 1 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_stays_finite(setup, precision) -> None:
    model = _model(setup)
    result = _fit(setup, model, epochs=2, mixed_precision=precision)
    assert result.history and all(math.isfinite(h["eval_loss"]) for h in result.history)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupt_checkpoints_are_detected_and_latest_falls_back(setup, tmp_path, caplog) -> None:
    _fit(setup, _model(setup), tmp_path, max_steps=9, save_every=3, keep_checkpoints=3)
    found = engine.checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_3", "step_6", "step_9"]
    for path in found:
        verify_checkpoint(path)
        assert "model.safetensors" in json.loads((path / "checksums.json").read_text())["sha256"]
    newest = found[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    with pytest.raises(
        CorruptCheckpointError, match="checksum mismatch in \\['model.safetensors'\\]"
    ):
        verify_checkpoint(found[-1])
    flipped = found[-2] / "optimizer.bin"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))  # one flipped byte
    assert resolve_resume("latest", tmp_path) == found[0]
    assert "falling back to an older checkpoint" in caplog.text
    with pytest.raises(CorruptCheckpointError):
        resolve_resume(str(found[-1]), tmp_path)
    # A resumed run continues from step 3, the newest intact checkpoint.
    result = _fit(setup, _model(setup), tmp_path, max_steps=12, save_every=3, keep_checkpoints=3,
                  resume_from="latest")  # fmt: skip
    assert result.steps == 12


def test_full_disk_during_a_save_leaves_the_previous_checkpoint_intact(
    setup, tmp_path, monkeypatch
) -> None:
    from accelerate import Accelerator

    original = Accelerator.save_state
    saves = []

    def save_state(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        if len(saves) == 2:
            original(self, output_dir, **kwargs)  # half-written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(OSError) as err:
        _fit(setup, _model(setup), tmp_path, max_steps=9, save_every=3)
    assert err.value.errno == errno.ENOSPC
    assert [p.name for p in engine.checkpoints(tmp_path)] == ["step_3"]
    verify_checkpoint(tmp_path / "checkpoints" / "step_3")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_3"
    ]  # no partial folder
    monkeypatch.setattr(Accelerator, "save_state", original)
    result = _fit(setup, _model(setup), tmp_path, max_steps=9, save_every=3, resume_from="latest")
    assert result.steps == 9


def test_every_torch_load_on_resume_is_weights_only(setup, tmp_path, monkeypatch) -> None:
    _fit(setup, _model(setup), tmp_path, max_steps=3, save_every=3)
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    _fit(setup, _model(setup), tmp_path, max_steps=6, save_every=3, resume_from="latest")
    assert calls and all(c is True for c in calls), calls


def test_from_pretrained_refuses_pickle_and_checks_the_weights(setup, tmp_path) -> None:
    model = _model(setup)
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "checksums.json").read_text())["sha256"]["model.safetensors"]
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        ValueError, match="refusing to load pickle file\\(s\\) \\['pytorch_model.bin'\\]"
    ):
        mm.MultimodalModel.from_pretrained(folder)
    folder = model.save_pretrained(tmp_path / "m2")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        mm.MultimodalModel.from_pretrained(folder)
    shutil.rmtree(tmp_path / "m2")


def test_paths_in_rows_cannot_escape_the_dataset_folder(tmp_path) -> None:
    import pandas as pd
    from PIL import Image

    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "img").mkdir(parents=True)
    outside.mkdir()
    for folder in (data / "img", outside):
        Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    (data / "img" / "link.png").symlink_to(outside / "a.png")
    values = [
        "img/a.png",
        str(data / "img" / "a.png"),
        "../outside/a.png",
        str(outside / "a.png"),
        "img/link.png",
    ]
    pd.DataFrame({"img": values, "label": [0, 1, 0, 1, 0]}).to_csv(data / "rows.csv", index=False)
    spec = mm.DatasetSpec(path=str(data / "rows.csv"), columns={"image": "img"}, domain=None,
                          validation_fraction=0, test_fraction=0)  # fmt: skip
    ds = mm.load_dataset(spec)["train"]
    model = mm.build_model({"encoders": {"image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 16}},
                            "fusion": {"name": "concat", "dim": 8}, "head": {"num_classes": 2}})  # fmt: skip
    view = mm.data.RowView(ds, spec, "train")
    rows = [view[i] for i in range(len(view))]
    ok = mm.data.MultimodalCollator(model, spec, "train")(rows[:2])
    assert ok["present"]["image"].all()
    for row in rows[2:]:
        with pytest.raises(
            ValueError,
            match=f"row {row['__row__']}, column 'img': path .* is outside the dataset folder",
        ):
            mm.data.MultimodalCollator(model, spec, "train")([row])
    lenient = mm.data.MultimodalCollator(model, spec, "train", on_error="missing")
    batch = lenient(rows)
    assert batch["present"]["image"].tolist() == [True, True, False, False, False]
    assert lenient.events["image"] == 3
    # An explicit media_root widens (or narrows) what is allowed.
    wide = mm.DatasetSpec(**{**spec.__dict__, "media_root": str(tmp_path)})
    assert mm.data.MultimodalCollator(model, wide, "train")([rows[1], rows[3]])["present"][
        "image"
    ].all()


def test_trust_remote_code_is_off_unless_the_spec_opts_in(tmp_path, monkeypatch, caplog) -> None:
    import datasets

    seen = []
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: (
            seen.append(k) or datasets.Dataset.from_dict({"x": [1.0] * 8, "label": [0, 1] * 4})
        ),
    )
    mm.load_dataset(mm.DatasetSpec(path="someone/data", columns={"tabular": ["x"]}, domain=None))
    assert "trust_remote_code" not in seen[-1]  # datasets' own default: off
    with caplog.at_level("WARNING"):
        mm.load_dataset(
            mm.DatasetSpec(
                path="someone/data", columns={"tabular": ["x"]}, domain=None, trust_remote_code=True
            )
        )
    assert seen[-1]["trust_remote_code"] is True
    assert "trust_remote_code=True" in caplog.text and "someone/data" in caplog.text
