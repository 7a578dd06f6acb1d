"""Source models kept across commands (``transfer.source_cache``): a ranking after a
benchmark reads the benchmark's models, scores exactly as from models it trains itself, and
never trusts an entry whose file does not match its checksum."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from tests.multimodal.tiny_run import tiny_run


def _suite(strategy: str = "head"):
    from multimodal.experiments.bench import Suite

    base = tiny_run(transfer={"k_shot": 3, "episodes": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}},
                    train={"epochs": 2, "progress": False, "strategy": strategy})  # fmt: skip
    return Suite(name="tiny", base=base, fusions=["concat"], adaptations=["head"], seeds=2,
                 pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[3], unimodal=False)  # fmt: skip


def _scores(rows: list[dict]) -> dict[tuple, tuple]:
    return {(r["seed"], r["episode"]): (r["leep"], r["logme"], r["zero_shot"]) for r in rows}


@pytest.mark.slow
def test_a_ranking_reads_the_source_models_a_benchmark_stored(tmp_path, monkeypatch) -> None:
    from multimodal.cli import main
    from multimodal.experiments.bench import run_benchmark
    from multimodal.experiments.rank import rank_suite
    from multimodal.experiments.transfer import source_cache

    monkeypatch.setenv("TRANSFERFUSE_CACHE", str(tmp_path / "cache"))
    suite, names = _suite(), ["leep", "logme"]
    trained = rank_suite(suite, estimators=names, reuse=False)
    assert {r["source_model"] for r in trained} == {"trained"}
    entries = sorted(source_cache.cache_root().glob("*.safetensors"))
    assert len(entries) == 2  # one per seed
    bench = run_benchmark(suite, tmp_path / "bench", progress=False)
    assert sorted(source_cache.cache_root().glob("*.safetensors")) == entries  # the same keys
    reused = rank_suite(suite, estimators=names)
    assert {r["source_model"] for r in reused} == {"reused"}
    assert _scores(reused) == _scores(trained)  # exactly: the same weights
    measured = {r["seed"]: r["zero_shot"] for r in bench}
    assert all(r["zero_shot"] == pytest.approx(measured[r["seed"]], abs=1e-9) for r in reused)

    damaged = entries[0].read_bytes()
    entries[0].write_bytes(damaged[:-4] + b"\0\0\0\0")  # same size, other weights
    again = rank_suite(suite, estimators=names)
    assert sorted(r["source_model"] for r in again if r["episode"] == 0) == ["reused", "trained"]
    assert _scores(again) == _scores(trained)  # the damaged one trained again, and stored
    assert all(r["source_model"] == "reused" for r in rank_suite(suite, estimators=names))
    other = dataclasses.replace(suite, pairs=[{"source": ["d1"], "target": ["d0"]}])
    assert {r["source_model"] for r in rank_suite(other, estimators=names)} == {"trained"}

    suite_file = tmp_path / "tiny.yaml"  # the command line: reused by default, --retrain trains
    suite_file.write_text(yaml.safe_dump({"name": "tiny", "base": suite.base, "fusions": ["concat"],
                                          "adaptations": ["head"], "seeds": 2, "pairs": suite.pairs,
                                          "k_shot": [3], "unimodal": False}))  # fmt: skip
    for flags, counts in (
        ([], {"reused": 2, "trained": 0}),
        (["--retrain"], {"reused": 0, "trained": 2}),
    ):
        out = tmp_path / f"rank{len(flags)}"
        args = [
            "rank",
            "--suite",
            str(suite_file),
            "--estimators",
            "leep",
            "--out",
            str(out),
            *flags,
        ]
        assert main(args) == 0
        assert json.loads((out / "rank.json").read_text())["source_models"] == counts


def test_a_fit_that_trains_its_encoders_is_not_stored(tmp_path, monkeypatch) -> None:
    """A fine-tuned encoder would cost its full size per seed: only head fits are kept."""
    from multimodal.experiments.rank import rank_suite
    from multimodal.experiments.transfer import source_cache

    monkeypatch.setenv("TRANSFERFUSE_CACHE", str(tmp_path / "cache"))
    rows = rank_suite(_suite("full"), seeds=1, estimators=["leep"])
    assert {r["source_model"] for r in rows} == {"trained"}
    assert not list(source_cache.cache_root().glob("*"))


def test_an_edited_fusion_is_trained_again(tmp_path, monkeypatch) -> None:
    """The key covers the source file of the fusion's class: a user's own fusion edited in
    place (no new package version) does not read back the model trained before the edit."""
    import importlib
    import sys
    import types

    from multimodal.experiments.transfer.source_cache import _code

    module = tmp_path / "my_fusion.py"
    module.write_text("import torch\nclass MyFusion(torch.nn.Module):\n    scale = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fusion = importlib.import_module("my_fusion").MyFusion()
    model = types.SimpleNamespace(fusion=fusion, head=types.SimpleNamespace())
    before = _code(model)
    assert _code(model) == before
    module.write_text("import torch\nclass MyFusion(torch.nn.Module):\n    scale = 2.0\n")
    assert _code(model) != before
    sys.modules.pop("my_fusion", None)


def test_other_toolkit_code_of_the_same_version_trains_again(tmp_path, monkeypatch) -> None:
    """Kept source models and scratch scores are keyed on the toolkit's source files: a
    checkout whose encoders compute other features, at the same package version, does not
    read back what earlier code trained."""
    from multimodal.core import provenance
    from multimodal.experiments.rank import rank_suite

    monkeypatch.setenv("TRANSFERFUSE_CACHE", str(tmp_path / "cache"))
    suite = _suite()
    assert {r["source_model"] for r in rank_suite(suite, seeds=1, estimators=["leep"])} == {
        "trained"
    }
    assert {r["source_model"] for r in rank_suite(suite, seeds=1, estimators=["leep"])} == {
        "reused"
    }
    monkeypatch.setattr(provenance, "code_fingerprint", lambda: "other code")
    assert {r["source_model"] for r in rank_suite(suite, seeds=1, estimators=["leep"])} == {
        "trained"
    }


def test_the_code_fingerprint_covers_every_source_file(tmp_path) -> None:
    from multimodal.core.provenance import code_fingerprint, tree_digest

    assert code_fingerprint() == code_fingerprint()
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "a.py").write_text("x = 1\n")
    before = tree_digest([tmp_path / "pkg"])
    (tmp_path / "pkg" / "sub" / "a.py").write_text("x = 2\n")
    assert tree_digest([tmp_path / "pkg"]) != before
