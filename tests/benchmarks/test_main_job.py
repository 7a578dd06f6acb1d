"""The main job (the README's first command, the real-digits-quick suite): its committed
reference decides what it was built to decide, and its suite is what the README runs; the
same data with every fusion says what docs/results.md says of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multimodal.experiments.bench import load_suite

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "benchmarks" / "results" / "real-digits-quick"
FUSIONS = ("concat", "cross_attention", "moe")


def _entries() -> list[dict]:
    return json.loads((REFERENCE / "summary.json").read_text())["summary"]


def test_the_main_job_is_the_default_suite_and_builds_its_data_from_pypi_packages() -> None:
    from multimodal.cli.bench import MAIN_JOB

    suite = load_suite(ROOT / "benchmarks" / "suites" / f"{MAIN_JOB}.yaml")
    assert MAIN_JOB == "real-digits-quick" and suite.builder == "make_real_digits.py"
    assert suite.builder_args.get("engines", "pip") == "pip"
    assert set(suite.fusions) == set(FUSIONS) and suite.unimodal
    for stage in (
        suite.base["train"],
        suite.base["transfer"]["adapt"],
        suite.base["transfer"]["scratch"],
    ):
        assert stage["strategy"] == "head"  # frozen encoders: episodes batch together
    for encoder in suite.base["encoders"].values():
        path = encoder.get("checkpoint_path") or encoder.get("model_name_or_path")
        assert path.startswith("package:")  # weights from the base install, no hub


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_committed_reference_decides_each_fusion_against_the_best_unimodal_and_concat(
    fusion: str,
) -> None:
    """Overall CI half-width <= 0.015, per-target <= 0.03, and an MDD <= 0.03 at 80% power,
    Holm-corrected across the table, for fusion - best unimodal and fusion - concat."""
    rows = [e for e in _entries() if e["fusion"] == fusion]
    assert {e["target"] for e in rows} == {"all", "hand-formant-de", "print-klatt-en"}
    for entry in rows:
        keys = ["gain_vs_unimodal"] + (["adapted_vs_concat"] if fusion != "concat" else [])
        for key in keys:
            comparison = entry[key]
            limit = 0.015 if entry["target"] == "all" else 0.03
            assert comparison["ci"] <= limit, (fusion, entry["target"], key, comparison["ci"])
            assert comparison["mdd"] <= 0.03, (fusion, entry["target"], key, comparison["mdd"])
            assert comparison["seeds"] >= 10 and comparison["tests"] > 1


def test_the_reference_ran_every_fit_batched() -> None:
    runs = [json.loads(p.read_text()) for p in sorted((REFERENCE / "runs").glob("*.json"))]
    assert (
        len(runs) == 6 * json.loads((REFERENCE / "summary.json").read_text())["settings"]["seeds"]
    )
    modes = {m for run in runs for r in run["reports"].values() for m in r["episode_fits"].values()}
    assert modes == {"batched"}


ALL_FUSIONS = ROOT / "benchmarks" / "results" / "real-digits-quick-all"


def test_every_fusion_on_the_main_jobs_data_and_what_docs_results_says_of_it() -> None:
    """The committed ``--fusion all`` run (docs/results.md): every registered fusion beside
    each modality alone, each fit batched; late fusion's overall adapted accuracy above
    every other row's 95% interval and above concat on every target (Holm p < 0.05);
    gated not above the best single modality and below concat; its six main-job rows
    are the main job's, number for number."""
    from fusion import list_fusions

    summary = json.loads((ALL_FUSIONS / "summary.json").read_text())["summary"]
    overall = {e["fusion"]: e for e in summary if e["target"] == "all"}
    assert set(overall) == {*list_fusions(), "audio-only", "image-only", "text-only"}
    late = overall["late"]["adapted"]
    for fusion, entry in overall.items():
        other = entry["adapted"]
        assert fusion == "late" or late["mean"] - late["ci"] > other["mean"] + other["ci"], fusion
    for entry in (e for e in summary if e["fusion"] == "late"):
        versus = entry["adapted_vs_concat"]
        assert versus["mean"] > 0 and versus["p_holm"] < 0.05, entry["target"]
    gated = overall["gated"]
    assert gated["gain_vs_unimodal"]["mean"] < 0 or gated["gain_vs_unimodal"]["p_holm"] >= 0.05
    assert gated["adapted_vs_concat"]["mean"] < 0 and gated["adapted_vs_concat"]["p_holm"] < 0.05
    main = {e["fusion"]: e["adapted"]["mean"] for e in _entries() if e["target"] == "all"}
    assert all(overall[f]["adapted"]["mean"] == mean for f, mean in main.items())
    runs = [json.loads(p.read_text()) for p in sorted((ALL_FUSIONS / "runs").glob("*.json"))]
    modes = {m for run in runs for r in run["reports"].values() for m in r["episode_fits"].values()}
    assert modes == {"batched"} and len(runs) == len(overall) * 20
