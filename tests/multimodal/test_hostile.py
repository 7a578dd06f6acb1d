"""Broken and hostile inputs outside the server: folders that ask for trust or lack
checksums, pickles in checkpoints, paths that leave their package, data without the keys
a spec assumes, and old import paths."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import shutil
import warnings

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import multimodal as mm
from multimodal import engine
from multimodal.core import hub_access
from multimodal.core.io import CorruptCheckpointError, UnverifiedFolderError, write_checksums
from multimodal.core.resources import local_or_hub, resolve_resource
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.tiny_run import tiny_data


@pytest.fixture(scope="module")
def setup():
    return tiny_data()


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
    config, _, _, rows = setup
    return mm.build_model(model_config(config), rows, seed=0).save_pretrained(
        tmp_path_factory.mktemp("saved") / "model"
    )


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def test_a_model_without_checksums_is_refused_unless_the_caller_allows_it(
    saved, tmp_path, caplog
) -> None:
    folder = _copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the last tensor's values
    weights.write_bytes(bytes(data))
    (folder / "checksums.json").unlink()
    with pytest.raises(UnverifiedFolderError, match="has no checksums.json.*allow_unverified"):
        mm.MultimodalModel.from_pretrained(folder)
    with caplog.at_level(logging.WARNING):
        mm.MultimodalModel.from_pretrained(folder, allow_unverified=True)
    assert "UNVERIFIED" in caplog.text


def test_a_folder_cannot_switch_on_remote_code(saved, tmp_path, monkeypatch, caplog) -> None:
    """trust_remote_code written into a saved model's config (checksums recomputed, as an
    attacker would) is ignored; only the caller's keyword turns it on."""
    from encoders.text import HFTextEncoder

    folder = _copy(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["encoders"]["text"]["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "checksums.json").unlink()
    write_checksums(folder)
    seen = []
    original = HFTextEncoder.__init__

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", False))
        original(self, *args, **kwargs)

    monkeypatch.setattr(HFTextEncoder, "__init__", recording)
    with caplog.at_level(logging.WARNING):
        mm.MultimodalModel.from_pretrained(folder)
    assert seen == [False]
    assert "asks for trust_remote_code; ignored" in caplog.text
    mm.MultimodalModel.from_pretrained(folder, trust_remote_code=True)
    assert seen == [False, True]


def test_a_refused_random_state_pickle_stops_the_resume(setup, tmp_path) -> None:
    """accelerate logs a refused random_states_0.pkl at INFO and resumes without it; the
    run would silently differ from an unbroken one."""
    config, spec, dsd, rows = setup

    def fit(**train):
        model = mm.build_model(model_config(config), rows, seed=0)
        cfg = train_config(config, output_dir=str(tmp_path), **train)
        return engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)

    fit(max_steps=3, save_every=3)
    checkpoint = engine.checkpoints(tmp_path)[-1]

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    with open(checkpoint / "random_states_0.pkl", "wb") as f:
        pickle.dump({"torch_manual_seed": Payload()}, f)
    (checkpoint / "checksums.json").unlink()
    write_checksums(checkpoint)
    with pytest.raises(CorruptCheckpointError, match="random_states_0.pkl is not plain"):
        fit(max_steps=6, save_every=3, resume_from="latest")
    # The same payload as the optimizer state: refused, without torch's weights_only advice.
    shutil.rmtree(tmp_path / "checkpoints")
    fit(max_steps=3, save_every=3, overwrite=True)
    checkpoint = engine.checkpoints(tmp_path)[-1]
    with open(checkpoint / "optimizer.bin", "wb") as f:
        pickle.dump({"state": Payload()}, f)
    (checkpoint / "checksums.json").unlink()
    write_checksums(checkpoint)
    with pytest.raises(
        CorruptCheckpointError, match="not plain tensors, so it was not unpickled"
    ) as refused:
        fit(max_steps=6, save_every=3, resume_from="latest")
    assert "weights_only=False" not in str(refused.value)


def test_own_storage_lets_safetensors_load_every_buffer() -> None:
    """torchaudio's periodic STFT window is a view of 256 of 257 values; the model gives it
    its own storage, which accelerate's load_state needs (it refused the audio encoder)."""
    from safetensors.torch import load_model, save_model

    from tests.multimodal.test_adversarial import AUDIO

    model = mm.build_model({"encoders": {"audio": AUDIO}, "fusion": {"name": "concat", "dim": 8},
                            "head": {"num_classes": 2}})  # fmt: skip
    for name, buffer in model.named_buffers():
        assert buffer.untyped_storage().nbytes() == buffer.nbytes, name
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, f"{tmp}/m.safetensors")
        load_model(model, f"{tmp}/m.safetensors")


def test_package_paths_stay_inside_their_package() -> None:
    with pytest.raises(ValueError, match="leaves the package"):
        resolve_resource("package:multimodal/../..")
    with pytest.raises(ValueError, match="is a module, not a package"):
        resolve_resource("package:os/path")
    assert resolve_resource("package:multimodal/core").endswith("core")


def test_a_local_path_that_does_not_exist_fails_at_once(monkeypatch) -> None:
    """No hub retries for a name the hub cannot have (a file name, ./x, a/b/c)."""

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with monkeypatch.context() as patched:  # nor the hub's reachability probe (its retries)
        patched.setattr(hub_access, "ensure_reachable_or_offline", no_hub)
        for path in ("does_not_exist.csv", "./missing", "a/b/c"):
            with pytest.raises(FileNotFoundError, match=f"data.path: '{path}' does not exist"):
                mm.load_dataset(mm.DatasetSpec(path=path, columns={"tabular": ["x"]}))
    assert local_or_hub("org/name", "data.path") == "org/name"
    with pytest.raises(FileNotFoundError, match="hf_text model_name_or_path: 'nowhere/x/y'"):
        mm.build_model({"encoders": {"text": {"name": "hf_text", "model_name_or_path": "nowhere/x/y"}},
                        "fusion": {"name": "concat", "dim": 8}, "head": {"num_classes": 2}})  # fmt: skip


@pytest.fixture()
def csv_folder(tmp_path):
    rows = pd.DataFrame({"x": np.arange(40, dtype=float), "img": [f"imgs/{i}.png" for i in range(40)],
                         "label": [i % 2 for i in range(40)]})  # fmt: skip
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "data" / "imgs" / f"{i}.png")
    rows.to_csv(tmp_path / "data" / "rows.csv", index=False)
    return tmp_path / "data"


def test_a_spec_without_the_domain_column_names_the_key_to_set(csv_folder) -> None:
    spec = mm.DatasetSpec(path=str(csv_folder / "rows.csv"), columns={"tabular": ["x"]})
    with pytest.raises(ValueError, match="data.domain is 'domain'.*data.domain: null"):
        mm.load_dataset(spec)


def test_carved_splits_are_announced(csv_folder, caplog) -> None:
    spec = mm.DatasetSpec(
        path=str(csv_folder / "rows.csv"), columns={"tabular": ["x"]}, domain=None
    )
    with caplog.at_level(logging.WARNING):
        dsd = mm.load_dataset(spec)
    assert "has no validation or test split: carved validation 15%, test 15%" in caplog.text
    assert sum(len(v) for v in dsd.values()) == 40


def test_missing_files_are_named_with_where_they_were_looked_for(csv_folder, monkeypatch) -> None:
    monkeypatch.chdir(csv_folder.parent)
    spec = mm.DatasetSpec(path=str(csv_folder), data_files={"train": "data/rows.csv"},
                          columns={"tabular": ["x"]}, domain=None)  # fmt: skip
    with pytest.raises(
        FileNotFoundError,
        match="data.data_files: 'data/rows.csv' matches no file in .*exists from the working folder",
    ):
        mm.load_dataset(spec)
    # Image paths relative to the working folder, not to the dataset's.
    pd.read_csv(csv_folder / "rows.csv").assign(img=lambda d: "data/" + d.img).to_csv(
        csv_folder / "cwd.csv", index=False
    )
    spec = mm.DatasetSpec(path=str(csv_folder / "cwd.csv"), columns={"image": "img"}, domain=None)
    ds = mm.load_dataset(spec)["train"]
    model = mm.build_model({"encoders": {"image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 16}},
                            "fusion": {"name": "concat", "dim": 8}, "head": {"num_classes": 2}})  # fmt: skip
    view = mm.data.RowView(ds, spec, "train")
    with pytest.raises(
        ValueError,
        match=r"no file 'data/imgs/\d+.png' in \[.*data'\] \(relative paths are read from data.media_root.*set data.media_root",
    ):
        mm.data.MultimodalCollator(model, spec, "train")([view[0]])


def test_a_missing_label_names_its_row_and_whole_number_floats_become_classes(csv_folder) -> None:
    frame = pd.read_csv(csv_folder / "rows.csv")
    frame["label"] = frame["label"].astype(object)
    frame.loc[17, "label"] = math.nan
    frame.to_csv(csv_folder / "nan.csv", index=False)
    spec = mm.DatasetSpec(path=str(csv_folder / "nan.csv"), columns={"tabular": ["x"]}, domain=None)
    with pytest.raises(ValueError, match="split 'train', row 17, column 'label'.*label is nan"):
        mm.load_dataset(spec)
    frame.loc[17, "label"] = 1.0
    frame.to_csv(csv_folder / "floats.csv", index=False)
    dsd = mm.load_dataset(
        mm.DatasetSpec(path=str(csv_folder / "floats.csv"), columns={"tabular": ["x"]}, domain=None)
    )
    assert dsd["train"].features["label"].dtype == "int64"


def test_an_infinite_tabular_value_is_missing_and_said_so_once(caplog) -> None:
    from encoders.tabular import TabularProcessor

    processor = TabularProcessor(numerical=["a"], categorical={})
    with caplog.at_level(logging.WARNING):
        out = processor([{"a": math.inf}, {"a": -math.inf}, {"a": 1.0}])["numerical"]
    assert torch.isnan(out[:2]).all() and out[2, 0] == 1.0
    assert caplog.text.count("is taken as a missing value") == 1 and "'a'" in caplog.text


def test_old_import_paths_work_and_say_where_names_moved() -> None:
    import importlib
    import sys

    for old in ("multimodal.config", "multimodal.model", "multimodal.training", "multimodal.heads"):
        sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from multimodal.config import load_run_config
        from multimodal.training import TrainConfig, fit

        heads = importlib.import_module("multimodal.heads")
    assert (
        fit is engine.fit
        and TrainConfig is engine.TrainConfig
        and load_run_config is mm.load_run_config
    )
    assert heads.Head is mm.Head
    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(
        "multimodal.training moved; import from" in m and "multimodal.engine.training" in m
        for m in moved
    )
    with pytest.raises(AttributeError, match="had no 'compute_metrics'"):
        importlib.import_module("multimodal.training").compute_metrics  # noqa: B018
