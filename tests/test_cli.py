from __future__ import annotations

import csv
import json
import logging
import math

import pytest
import yaml

from multimodal.cli import build_parser, main
from tests.multimodal.tiny_run import tiny_run


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_run()))
    return path


@pytest.fixture(scope="module")
def trained(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                "--config",
                str(config_file),
                "--output-dir",
                str(out),
                "train.epochs=2",
                "fusion.name=moe",
                "fusion.num_experts=2",
            ]
        )
        == 0
    )
    return out


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in (
        "list",
        "train",
        "evaluate",
        "calibrate",
        "predict",
        "transfer",
        "export-dataset",
        "robustness",
        "explain",
        "ensemble",
        "reproduce",
        "export",
        "serve",
        "drift",
        "readapt",
        "history",
        "rank",
    ):
        assert command in text


def test_train_writes_results_with_overrides_applied(trained, capsys) -> None:
    results = json.loads((trained / "results.json").read_text())
    assert results["steps"] > 0 and 0.0 <= results["validation_accuracy"] <= 1.0
    saved = json.loads((trained / "best_model" / "config.json").read_text())
    assert saved["fusion"]["name"] == "moe" and saved["fusion"]["num_experts"] == 2


def test_unknown_override_is_an_error_naming_close_matches(config_file, capsys) -> None:
    assert main(["train", "--config", str(config_file), "train.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learning_rate'" in err and "lr" in err


def test_evaluate_reproduces_the_logged_test_metrics(
    trained, config_file, tmp_path, capsys
) -> None:
    capsys.readouterr()
    args = ["evaluate", "--model", str(trained), "--config", str(config_file)]
    assert main([*args, "--domain", "d0", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr()
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    logged = json.loads((trained / "results.json").read_text())["test"]
    assert {k: report["overall"][k] for k in logged} == pytest.approx(logged)
    assert {"ece", "brier"} <= set(logged)
    assert report["overall"]["accuracy_at_100"] == pytest.approx(logged["accuracy"])
    assert (tmp_path / "e" / "reliability.png").is_file()
    assert "in-domain evaluation" in out.err  # d0 is the domain it trained on
    assert "d0 (in-domain)" in out.out and report["in_domain"] == ["d0"]
    assert "Flattening the indices" not in out.err and "Map" not in out.err  # quiet
    assert logging.getLogger("onnx_ir").getEffectiveLevel() >= logging.WARNING
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    report = json.loads((tmp_path / "all" / "evaluation.json").read_text())
    assert sorted(report["domains"]) == ["d0", "d1"]
    assert report["overall"]["n"] == sum(d["n"] for d in report["domains"].values())
    matrix = report["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == report["overall"]["n"]
    assert sum(matrix[i][i] for i in range(4)) / report["overall"]["n"] == pytest.approx(
        report["overall"]["accuracy"]
    )
    assert [c["support"] for c in report["classes"].values()] == [sum(row) for row in matrix]
    assert (tmp_path / "all" / "confusion.png").is_file()
    printed = capsys.readouterr().out
    assert "overall" in printed and "precision" in printed
    assert main([*args, "--domain", "d1", "--out", str(tmp_path / "t")]) == 0
    assert "in-domain" not in capsys.readouterr().err


def test_train_with_a_transfer_section_trains_on_the_source_domains(
    trained, config_file, tmp_path, capsys
) -> None:
    recorded = json.loads((trained / "run_config.json").read_text())
    assert recorded["trained_domains"] == ["d0"] and recorded["all_domains"] is False
    assert json.loads((trained / "results.json").read_text())["trained_domains"] == ["d0"]
    out = tmp_path / "all"
    assert main(["train", "--config", str(config_file), "--output-dir", str(out), "--all-domains",
                 "train.epochs=1"]) == 0  # fmt: skip
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["trained_domains"] == ["d0", "d1"] and recorded["all_domains"] is True
    capsys.readouterr()
    robustness = [
        "robustness",
        "--model",
        str(trained),
        "--config",
        str(config_file),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(robustness) == 0
    assert "in-domain: the model trained on d0" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "robustness.json").read_text())["in_domain"] == ["d0"]


def test_predict_from_a_dataset_and_from_files(trained, config_file, tmp_path, capsys) -> None:
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained),
                "--config",
                str(config_file),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    assert "in-domain evaluation" in capsys.readouterr().err  # the test split holds d0 rows
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert rows and {
        "index",
        "row",
        "domain",
        "prediction",
        "class",
        "probabilities",
        "true",
        "true_class",
    } <= set(rows[0])
    assert abs(sum(json.loads(rows[0]["probabilities"])) - 1) < 1e-4
    # the synthetic label column is a ClassLabel: its names travel with the run
    assert json.loads((trained / "run_config.json").read_text())["class_names"] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert all(r["class"] == r["prediction"] and r["true_class"] == r["true"] for r in rows)
    (tmp_path / "texts.txt").write_text("the velno quiet words\nanother line here\n")
    with open(tmp_path / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tab_0", "tab_1", "tab_2", "tab_3", "tab_channel"])
        writer.writerow([0.1, 0.2, "", 0.4, "web"])
    out = tmp_path / "p.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained),
                "--files",
                str(tmp_path / "texts.txt"),
                str(tmp_path / "table.csv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # the files make one sample: the text file's text and the one-row table
    assert len(records) == 1 and 0 <= records[0]["prediction"] < 4
    assert records[0]["files"] == f"{tmp_path / 'texts.txt'} {tmp_path / 'table.csv'}"
    assert records[0]["class"] == str(records[0]["prediction"])
    files = ["--files", str(tmp_path / "texts.txt"), str(tmp_path / "table.csv")]
    again = ["predict", "--model", str(trained), *files, "--each", "--out", str(out)]
    assert main(again) == 2  # the earlier predictions stay, unless --overwrite
    assert len(out.read_text().splitlines()) == 1
    assert main([*again, "--overwrite"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and [r["files"] for r in records] == [files[1], files[1], files[2]]
    twice = ["--files", str(tmp_path / "texts.txt"), str(tmp_path / "texts.txt")]
    assert (
        main(["predict", "--model", str(trained), *twice, "--out", str(tmp_path / "new.jsonl")])
        == 2
    )


def test_transfer_prints_the_table_and_writes_the_report(config_file, tmp_path, capsys) -> None:
    assert (
        main(
            [
                "transfer",
                "--config",
                str(config_file),
                "--output-dir",
                str(tmp_path),
                "train.epochs=1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for column in ("source accuracy", "zero-shot", "adapted", "scratch", "forgetting"):
        assert column in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["source_domains"] == ["d0"] and list(report["targets"]) == ["d1"]
    target = report["targets"]["d1"]
    assert target["transfer_gain"] == pytest.approx(target["adapted"] - target["scratch"])
    assert target["forgetting"] == pytest.approx(report["source"] - target["source_after"])
    assert target["adapt_samples"] == 3 * 4  # k_shot 3 per class, 4 classes
    assert set(report["stage_seconds"]) == {
        "load",
        "source_train",
        "zero_shot_eval",
        "adapt",
        "scratch",
    }


def test_robustness_missing_modalities(trained, config_file, tmp_path, capsys) -> None:
    capsys.readouterr()
    args = ["robustness", "--model", str(trained), "--config", str(config_file), "--domain", "d0"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "(none)" in out and "tabular" in out
    assert not (tmp_path / "r" / "corruptions.png").exists()  # only with --corruptions
    assert main([*args, "--subsets", "one", "--corruptions", "--reference", str(trained),
                 "--adversarial", "--budget", "tabular=0.5", "--pgd-steps", "2", "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "c" / "robustness.json").read_text())
    curves = result["corruptions"]
    assert (tmp_path / "c" / "corruptions.png").stat().st_size > 10_000
    assert {(c["modality"], c["corruption"]) for c in curves} == {
        ("text", "typos"),
        ("text", "word_dropout"),
        ("tabular", "missing"),
        ("tabular", "noise"),
    }
    assert all(
        len(c["accuracy"]) == 6 and c["effective_robustness"] == 0.0 for c in curves
    )  # against itself
    attacks = {(r["attack"], r["attacked"]): r for r in result["adversarial"]}
    assert set(attacks) == {("clean", "-"), ("fgsm", "all"), ("pgd", "all")}  # tabular only
    assert attacks[("pgd", "all")]["budgets"] == {"tabular": 0.5}
    assert attacks[("pgd", "all")]["loss"] >= attacks[("clean", "-")]["loss"]
    rows = json.loads((tmp_path / "r" / "robustness.json").read_text())["missing_modalities"]
    assert [r["dropped"] for r in rows] == [
        [],
        ["tabular"],
        ["text"],
    ]  # every proper subset of 2 modalities
    results = json.loads((trained / "results.json").read_text())["test"]
    # relative to nothing dropped: 1, unless nothing dropped scores 0 (a 2-epoch model on 7 rows)
    assert rows[0]["relative"] == 1.0 or (
        results["accuracy"] == 0 and math.isnan(rows[0]["relative"])
    )
    assert rows[0]["accuracy"] == results["accuracy"]  # nothing dropped = the plain evaluation


def test_run_folder_records_provenance_and_reproduce_shows_zero_diff(
    trained, tmp_path, capsys
) -> None:
    recorded = json.loads((trained / "run_config.json").read_text())
    assert len(recorded["config_hash"]) == 12 and recorded["config"]["fusion"]["name"] == "moe"
    assert recorded["environment"]["packages"]["torch"]
    assert recorded["code"] is None or len(recorded["code"]["commit"]) == 40
    assert recorded["data"]["source"] == "synthetic"
    capsys.readouterr()
    assert main(["reproduce", str(trained), "--output-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "max |diff| 0 over" in out and "reproduced (tolerance 0)" in out
    report = json.loads((tmp_path / "again" / "reproduction.json").read_text())
    keys = {r["key"] for r in report["rows"]}
    assert {"test_accuracy", "test_loss", "validation_accuracy", "best_step"} <= keys
    assert report["max_abs_diff"] == 0.0
    # A changed result is reported, with a non-zero exit status.
    results = json.loads((trained / "results.json").read_text())
    (tmp_path / "changed").mkdir()
    for name in ("run_config.json",):
        (tmp_path / "changed" / name).write_text((trained / name).read_text())
    results["test"]["accuracy"] += 0.25
    (tmp_path / "changed" / "results.json").write_text(json.dumps(results))
    assert main(["reproduce", str(tmp_path / "changed")]) == 1
    assert "NOT reproduced" in capsys.readouterr().out


def test_old_spellings_still_work_with_a_deprecation_message(capsys) -> None:
    args = build_parser().parse_args(["adapt", "--model", "m", "--data", "missing.yaml"])
    assert args.command == "adapt" and args.func.__name__ == "run_readapt"
    assert main(["adapt", "--model", "m", "--data", "missing.yaml"]) == 2
    assert "multimodal adapt is deprecated" in capsys.readouterr().err
    from multimodal.engine.config import TrainConfig

    with pytest.warns(FutureWarning, match="train.adapt_method is deprecated; use train.uda"):
        cfg = TrainConfig.from_dict({"adapt_method": "dann", "adapt_weight": 0.5})
    assert (cfg.uda, cfg.uda_weight) == ("dann", 0.5)


def test_help_imports_no_model_code() -> None:
    import subprocess
    import sys

    script = ("import sys; from multimodal.cli import build_parser; build_parser(); "
              "print(sorted(m for m in ('torch', 'transformers', 'timm', 'datasets') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_documented_defaults_are_the_ones_the_code_uses(tmp_path, capsys) -> None:
    import argparse
    import re
    from pathlib import Path

    from multimodal.cli.training import transfer_output_dir

    def documented(parser: argparse.ArgumentParser) -> list[tuple[str, str, object]]:
        """(dest, the default the help states, the parser's default) of each option that has one."""
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += documented(sub)
                continue
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            text = parser._get_formatter()._expand_help(action) if action.help else ""
            m = re.search(r"\(default:? ([^)]*)\)", text)
            assert m, f"--{action.dest}: the help does not state its default {action.default!r}"
            found.append((action.dest, m.group(1), action.default))
        return found

    checked = documented(build_parser())
    assert len(checked) >= 5
    for dest, text, default in checked:
        assert str(default) in text, f"--{dest}: help says {text!r}, the default is {default!r}"
    from multimodal.cli.bench import default_out

    bench_parser = build_parser()._subparsers._group_actions[0].choices["bench"]
    out_help = next(a.help for a in bench_parser._actions if a.dest == "out")
    assert str(default_out("SUITE")) in out_help
    assert default_out("synthetic-quick") == Path("runs/benchmarks/synthetic-quick")
    # transfer writes where mm.transfer does: the config's output_dir; beside a training
    # run's files (no name in common) with a warning
    assert transfer_output_dir({}, None) == Path("runs/transfer")
    trained = tmp_path / "run"
    trained.mkdir()
    assert transfer_output_dir({"output_dir": str(trained)}, None) == trained
    (trained / "results.json").write_text("{}")
    assert transfer_output_dir({"output_dir": str(trained)}, None) == trained
    assert "already holds results.json" in capsys.readouterr().err
    assert transfer_output_dir({}, str(tmp_path / "x")) == tmp_path / "x"


def test_a_run_recorded_before_source_only_training_reproduces_on_every_domain(
    trained, tmp_path
) -> None:
    import shutil

    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(trained / "results.json", old / "results.json")
    record = json.loads((trained / "run_config.json").read_text())
    for key in ("trained_domains", "all_domains", "class_names"):
        record.pop(key)
    (old / "run_config.json").write_text(json.dumps(record))
    # the numbers differ (it trains on more rows); what matters is what it trained on
    main(["reproduce", str(old), "--output-dir", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "run_config.json").read_text())
    assert again["all_domains"] is True and again["trained_domains"] == ["d0", "d1"]


@pytest.fixture(scope="module")
def hostile_folders(trained, tmp_path_factory):
    """A corrupt saved model, one without checksums.json and a corrupt checkpoint."""
    import shutil

    root = tmp_path_factory.mktemp("hostile")
    corrupt = shutil.copytree(trained / "best_model", root / "corrupt")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    unverified = shutil.copytree(trained / "best_model", root / "unverified")
    (unverified / "checksums.json").unlink()
    checkpoint = shutil.copytree(sorted((trained / "checkpoints").iterdir())[-1], root / "step_9")
    (checkpoint / "optimizer.bin").write_bytes(b"not an optimizer")
    (root / "broken.yaml").write_text("train: [1\n")
    (root / "tag.yaml").write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    (root / "run").symlink_to(trained)
    (root / "header.csv").write_text("text,tab_0,label\n")
    (root / "unknown.csv").write_text("foo,bar\n1,2\n")
    rows = [f"word{i % 5} w{i},{i / 10},{i % 3},web,0,d{i % 2}" for i in range(40)]
    (root / "one_class.csv").write_text(
        "text,tab_0,tab_1,tab_channel,label,domain\n" + "\n".join(rows) + "\n"
    )
    return root


# (arguments, a fragment of the one line on stderr); {cfg} is the tiny config, {h} the folder
# of hostile_folders.
BAD_CONFIGS = [
    (["train", "--config", "{cfg}", "train.epochs=abc"], "train.epochs: expected an integer, got 'abc'"),
    (["train", "--config", "{cfg}", "train.lr=[1,2]"], "train.lr: expected a number"),
    (["train", "--config", "{cfg}", "train.batch_size=0"], "train.batch_size: expected at least 1"),
    (["train", "--config", "{cfg}", "train.lrr=1"], "unknown key 'train.lrr'"),
    (["train", "--config", "{cfg}", "transfer.k_shot=x"], "transfer.k_shot: expected an integer"),
    (["train", "--config", "{h}/broken.yaml"], "broken.yaml, line 2: not valid YAML"),
    (["train", "--config", "{h}/tag.yaml"], "line 1: not valid YAML: could not determine a constructor"),
    (["train", "--config", "{h}/missing.yaml"], "No such file or directory"),
    (["train", "--config", "{cfg}", "data.path=does_not_exist.csv"], "data.path: 'does_not_exist.csv' does not exist"),
    (["train", "--config", "{cfg}", "encoders.text.config=null", "encoders.text.model_name_or_path=package:os/x"],
     "'os' is a module, not a package"),
    (["train", "--config", "{cfg}", "--resume-from", "{h}/step_9"], "checksum mismatch in ['optimizer.bin']"),
    (["predict", "--model", "{h}/corrupt", "--config", "{cfg}", "--out", "{h}/p.jsonl"],
     "checksum mismatch in ['model.safetensors']"),
    (["predict", "--model", "{h}/unverified", "--config", "{cfg}", "--out", "{h}/p.jsonl"],
     "has no checksums.json"),
    (["evaluate", "--model", "{h}/nowhere", "--config", "{cfg}"], "nowhere has no config.json"),
    # A newcomer's inputs that gave a traceback or an unhelpful line (#43)
    (["train", "--config", "{cfg}", "encoders=5"], "encoders is 5, but it is a section of keys"),
    (["train", "--config", "{cfg}", "encoders.audio=null"], "encoders.audio is null, not an encoder"),
    (["train", "--config", "{cfg}", "train.epochs=0"], "train.epochs is 0"),
    (["train", "--config", "{cfg}", "data.options.samples_per_domain=0"],
     "data.options.samples_per_domain: expected at least 1, got 0"),
    (["train", "--config", "{cfg}", "data.path={h}/header.csv"], "has no rows"),
    (["train", "--config", "{cfg}", "data.path=nosuchorg/nosuchdataset"],
     "'nosuchorg/nosuchdataset' is not a local path"),
    (["train", "--config", "{cfg}", "data.path=nosuchfolder"], "'nosuchfolder' is not a local path"),
    (["evaluate", "--model", "{h}/run", "--config", "{cfg}", "--split", "bogus"],
     "--split: the data has no split 'bogus'; its splits: ['test', 'train', 'validation']"),
    (["predict", "--model", "nope", "--config", "{cfg}"], "'nope' is not a local path"),
    (["predict", "--model", "{h}/run", "--files", "{h}/unknown.csv"],
     "none of its columns ['foo', 'bar'] is read by this model"),
    (["predict", "--model", "{h}/run", "--config", "{cfg}", "--out", "{h}/p.xlsx"],
     "predictions are written as .csv, .jsonl, .json"),
    (["predict", "--model", "{h}/run"], "predict needs --config"),
]  # fmt: skip

# Flags argparse refuses: exit 2 and one "error:" line naming the flag and the bound.
BAD_FLAGS = [
    (["predict", "--model", "m", "--batch-size", "0"], "argument --batch-size: expected at least 1, got 0"),
    (["serve", "--model", "m", "--port", "-1"], "argument --port: a port is 0 to 65535, got -1"),
    (["serve", "--model", "m", "--max-payload-mb", "0"], "argument --max-payload-mb: expected more than 0"),
    (["drift", "--model", "m", "--alpha", "1.5"], "argument --alpha: expected a value below 1"),
    (["bench", "--suite", "x", "--seeds", "two"], "argument --seeds: expected an integer, got 'two'"),
]  # fmt: skip


def _filled(args: list[str], config_file, folders) -> list[str]:
    filled = [a.format(cfg=config_file, h=folders) for a in args]
    out = folders / "out" / str(abs(hash(tuple(args))))  # each case its own: a failed run stays
    return filled + (["--output-dir", str(out)] if args[0] == "train" else [])


@pytest.mark.parametrize(
    ("args", "fragment"), BAD_CONFIGS, ids=[" ".join(a[3:] or a[:3]) for a, _ in BAD_CONFIGS]
)
def test_bad_configs_and_files_get_one_line_and_exit_status_2(
    config_file, hostile_folders, capsys, monkeypatch, args, fragment
) -> None:
    """Each case through the CLI's entry point: exit status 2, one line on stderr naming the
    key, file or row, and no exception escaping (which would print a traceback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_filled(args, config_file, hostile_folders)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("multimodal ")]
    assert len(errors) == 1 and fragment in errors[0], lines
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize(("args", "fragment"), BAD_FLAGS, ids=[a[-2] for a, _ in BAD_FLAGS])
def test_bad_flag_values_are_refused_naming_the_flag(capsys, args, fragment) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], errors


@pytest.mark.slow
def test_what_used_to_pass_silently_now_warns(config_file, trained, hostile_folders, tmp_path,
                                              capsys, caplog) -> None:  # fmt: skip
    """One class in training and a modality the data lacks: it runs, and says so."""
    caplog.set_level(logging.WARNING)
    one_class = ["train", "--config", str(config_file), "--output-dir", str(tmp_path / "one"),
                 f"data.path={hostile_folders}/one_class.csv", "data.options={}", "train.epochs=1",
                 "encoders.tabular.numerical=[tab_0,tab_1]",
                 "data.columns={text: text, tabular: [tab_0, tab_1, tab_channel]}"]  # fmt: skip
    assert main(one_class) == 0
    assert "every training row has the label 0" in caplog.text
    text_only = tmp_path / "text_only.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"]["columns"] = {"text": "text"}
    text_only.write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--model", str(trained), "--config", str(text_only)]) == 0
    assert "the data maps no column to it" in capsys.readouterr().err


def test_predict_without_out_prints_json_lines(trained, config_file, capsys) -> None:
    assert main(["predict", "--model", str(trained), "--config", str(config_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("prediction" in json.loads(line) for line in lines)


@pytest.mark.slow
def test_as_processes_stderr_is_one_line_and_debug_shows_the_traceback(
    config_file, hostile_folders
) -> None:
    """Three cases as a user runs them, logging included: stderr is exactly one line; and
    --debug gives the traceback instead."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cases = [BAD_CONFIGS[i] for i in (0, 6, 11)]
    runs = [subprocess.Popen([sys.executable, "-m", "multimodal.cli", *_filled(args, config_file, hostile_folders)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args, _ in cases]  # fmt: skip
    for (args, fragment), run in zip(cases, runs, strict=True):
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 2, (args, stderr[-2000:])
        assert stderr.count("\n") == 1 and fragment in stderr and "Traceback" not in stderr, stderr
    debug = subprocess.run([sys.executable, "-m", "multimodal.cli", *_filled(cases[0][0], config_file, hostile_folders), "--debug"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_user_errors_from_a_full_disk_name_it_and_bugs_keep_their_traceback(tmp_path) -> None:
    import errno

    from multimodal.cli.errors import user_error
    from multimodal.core.io import CorruptCheckpointError

    full = user_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.bin")))
    assert "disk is full or over quota" in full and "MiB free in" in full and "x.bin" in full
    torch_full = user_error(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    )
    assert "disk is full" in torch_full
    assert (
        user_error(CorruptCheckpointError("checkpoint x is corrupt")) == "checkpoint x is corrupt"
    )
    assert user_error(ValueError("a\nb")) == "a; b"
    assert user_error(KeyError("bug")) is None and user_error(ZeroDivisionError()) is None
    assert user_error(RuntimeError("CUDA error")) is None
    hub = user_error(
        OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck it")
    )
    assert hub.startswith("We couldn't connect") and "HF_HUB_OFFLINE=1" in hub


def test_the_card_of_a_calibrated_copy_has_the_model_index_data_and_temperature(
    trained, config_file, tmp_path
) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(trained), "--config", str(config_file),
                 "--split", "validation", "--out", str(out)]) == 0  # fmt: skip
    card = ModelCard.load(out / "README.md")
    results = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    parent = {(r.dataset_config, r.metric_name): r.metric_value
              for r in ModelCard.load(trained / "best_model" / "README.md").data.eval_results}  # fmt: skip
    assert parent and set(parent.items()) <= set(results.items())  # the per-domain results carried
    assert ("validation split", "calibrated ece") in results
    temperature = json.loads((out / "config.json").read_text())["head"]["temperature"]
    assert (
        temperature != 1.0 and card.data.transferfuse["calibration"]["temperature"] == temperature
    )
    assert (
        f"temperature {temperature:.4f}" in card.text and "Trained on the domains d0" in card.text
    )
    assert "Not recorded" not in card.text and "python 3." in card.text


@pytest.mark.slow
def test_a_second_transfer_with_another_arm_trains_no_scratch_model(
    config_file, tmp_path, monkeypatch, capsys
) -> None:
    """Scratch does not depend on the arm: the second command reads the first's scores."""
    from multimodal.experiments.transfer import stages

    monkeypatch.setenv("TRANSFERFUSE_CACHE", str(tmp_path / "cache"))
    built = []
    original = stages.ScratchStage.initial_model
    monkeypatch.setattr(stages.ScratchStage, "initial_model",
                        lambda self, **kw: built.append(self.episode.index) or original(self, **kw))  # fmt: skip
    common = ["transfer", "--config", str(config_file)]
    assert main([*common, "--output-dir", str(tmp_path / "head"), "transfer.episodes=2"]) == 0
    assert sorted(built) == [0, 1]
    assert main([*common, "--output-dir", str(tmp_path / "l2sp"), "transfer.episodes=2",
                 "transfer.adaptation=l2sp"]) == 0  # fmt: skip
    assert sorted(built) == [0, 1]  # none for the second command
    table = capsys.readouterr().out
    assert "adaptation: l2sp (3-shot, 2 episodes per target" in table and " ± " in table
    first, second = (
        json.loads((tmp_path / arm / "report.json").read_text()) for arm in ("head", "l2sp")
    )
    scratch = [[e["scratch"] for e in r["targets"]["d1"]["episodes"]] for r in (first, second)]
    assert scratch[0] == scratch[1] and "reused 2 of 2" in second["episode_fits"]["scratch d1"]
    retrain = [*common, "--output-dir", str(tmp_path / "again"), "--retrain-scratch",
               "transfer.episodes=2", "transfer.adaptation=l2sp"]  # fmt: skip
    assert main(retrain) == 0 and sorted(built) == [0, 0, 1, 1]


def test_overrides_may_follow_an_option_and_a_misspelled_flag_is_still_refused(
    config_file, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config_file),
        "train.epochs=1",
        "--output-dir",
        str(out),
        "fusion.dim=8",
    ]
    assert main(args) == 0
    assert json.loads((out / "best_model" / "config.json").read_text())["fusion"]["dim"] == 8
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(config_file), "--outptu", str(out), "train.epochs=1"])
    assert stop.value.code == 2 and "unrecognized arguments: --outptu" in capsys.readouterr().err


def test_timm_weight_loading_lines_are_quiet_unless_verbose(caplog) -> None:
    """timm logs each pretrained load at INFO ('Loading pretrained weights from state dict')."""
    import logging

    from multimodal.cli.noise import quiet_third_parties

    timm_logger = logging.getLogger("timm.models._builder")
    before = logging.getLogger("timm").level
    caplog.set_level(logging.INFO)
    try:
        logging.getLogger("timm").setLevel(logging.NOTSET)
        quiet_third_parties(verbose=True)
        timm_logger.info("Loading pretrained weights from state dict")
        assert "Loading pretrained weights" in caplog.text
        caplog.clear()
        quiet_third_parties()
        timm_logger.info("Loading pretrained weights from state dict")
        assert "Loading pretrained weights" not in caplog.text
    finally:
        logging.getLogger("timm").setLevel(before)


def test_rays_notice_that_it_secured_its_cluster_is_quiet_and_its_warning_is_not() -> None:
    """Ray tells, at every local cluster that federate or bench starts, that it enabled
    token authentication; that it is off is a warning the user must still see."""
    import logging

    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")
    from multimodal.cli.noise import quiet_third_parties

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    setup.logger.addHandler(handler)
    try:
        quiet_third_parties()
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    finally:
        setup.logger.removeHandler(handler)
    assert [m.split(".")[0] for m in seen] == [
        "Token authentication is disabled for this Ray cluster"
    ]


@pytest.mark.parametrize(("drifted", "status"), [(True, 1), (False, 0)])
def test_drift_exits_1_when_the_data_drifted_and_0_when_not(monkeypatch, capsys, drifted, status):
    """As ``diff`` and ``bench --compare-to``: 1 says "drifted", 2 stays an error's status."""
    from multimodal.analysis import drift
    from multimodal.cli import analysis

    report = {"overall": {"drift": drifted}}
    monkeypatch.setattr(analysis, "load_model", lambda args: object())
    monkeypatch.setattr(analysis, "spec_split", lambda *a: (None, None))
    monkeypatch.setattr(drift, "detect_drift", lambda *a, **k: report)
    monkeypatch.setattr(drift, "drift_markdown", lambda r: "verdict")
    assert (
        main(["drift", "--model", "m", "--reference", "a.yaml", "--incoming", "b.yaml"]) == status
    )
    assert "verdict" in capsys.readouterr().out


def test_cache_lists_the_stores_and_clears_only_what_is_asked(tmp_path, monkeypatch, capsys):
    """``multimodal cache`` reports both stores; ``--clear --older-than`` removes the entries
    unused that long (a read counts as use), a key's files and interrupted temporaries
    together; ``--clear`` alone the rest; nothing else in the folder is touched."""
    import os
    import time

    from multimodal.experiments.transfer import scratch_cache

    monkeypatch.setenv("TRANSFERFUSE_CACHE", str(tmp_path))
    (tmp_path / "source").mkdir()
    old = [tmp_path / "source" / n for n in ("old.json", "old.safetensors", ".old.json.x1")]
    new = [tmp_path / "source" / n for n in ("new.json", "new.safetensors")]
    for path in [*old, *new]:
        path.write_bytes(b"0" * 1000)
    scratch_cache.store("s1", 0.5, {})
    scratch_cache.store("s2", 0.25, {})
    (tmp_path / "mine.txt").write_text("a file of the user's")
    ten_days_ago = time.time() - 10 * 86400
    for path in [*old, tmp_path / "scratch" / "s1.json", tmp_path / "scratch" / "s2.json"]:
        os.utime(path, (ten_days_ago, ten_days_ago))
    assert scratch_cache.load("s2") == 0.25  # read: used now
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "source: 2 entries, 0.0 MB" in out and "scratch: 2 entries" in out
    assert main(["cache", "--clear", "--older-than", "7"]) == 0
    assert "removed 2 entries unused for more than 7 days" in capsys.readouterr().out
    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    assert scratch_cache.load("s1") is None and scratch_cache.load("s2") == 0.25
    assert main(["cache", "--clear", "--kind", "source"]) == 0
    assert not any(p.exists() for p in new) and scratch_cache.load("s2") == 0.25
    assert (tmp_path / "mine.txt").exists()


# Each command that writes where it is pointed, and a file an earlier run of it left there
# ({run}: a copy of the trained run folder, {cfg}: the tiny config, {o}: an output folder).
EARLIER_OUTPUTS = [
    (["evaluate", "--model", "{run}", "--config", "{cfg}"], "{run}/evaluation-test/evaluation.json"),
    (["evaluate", "--model", "{run}", "--config", "{cfg}", "--out", "{o}"], "{o}/reliability.png"),
    (["predict", "--model", "{run}", "--config", "{cfg}", "--out", "{o}/p.csv"], "{o}/p.csv"),
    (["robustness", "--model", "{run}", "--config", "{cfg}", "--out", "{o}"], "{o}/robustness.json"),
    (["explain", "--model", "{run}", "--config", "{cfg}", "--out", "{o}"], "{o}/contributions.png"),
    (["ensemble", "--models", "{run}", "{run}", "--config", "{cfg}", "--out", "{o}/e.json"], "{o}/e.json"),
    (["ensemble", "--models", "{run}", "{run}", "--config", "{cfg}", "--save-soup", "{o}/soup"],
     "{o}/soup/model.safetensors"),
    (["drift", "--model", "{run}", "--reference", "{cfg}", "--incoming", "{cfg}", "--out", "{o}"], "{o}/drift.md"),
    (["export", "--model", "{run}"], "{run}/onnx/model.onnx"),
    (["export", "--model", "{run}", "--out", "{o}/x", "--quantize", "dynamic"],
     "{o}/x-int8-dynamic.report.json"),
    (["export-dataset", "--out", "{o}"], "{o}/data/train-00000-of-00001.parquet"),
    (["distill", "--teacher", "{run}", "--student-config", "{cfg}", "--output-dir", "{o}"], "{o}/distill.json"),
    (["federate", "--config", "{cfg}", "--output-dir", "{o}"], "{o}/model/config.json"),
    (["calibrate", "--model", "{run}", "--config", "{cfg}", "--out", "{o}/c"], "{o}/c.calibration.json"),
    (["rank", "--suite", "synthetic-quick", "--out", "{o}"], "{o}/rankings.csv"),
    (["rank", "--from", "{o}"], "{o}/rank/validation.md"),
    (["rank", "--auto", "{o}"], "{o}/auto.json"),
    (["transfer", "--config", "{cfg}", "--output-dir", "{o}"], "{o}/report.json"),
    (["transfer", "--config", "{cfg}", "--output-dir", "{o}"], "{o}/scratch-d1/metrics.jsonl"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "earlier"), EARLIER_OUTPUTS,
                         ids=[f"{a[0]}-{e.rsplit('/', 1)[-1]}" for a, e in EARLIER_OUTPUTS])  # fmt: skip
def test_what_an_earlier_run_wrote_is_replaced_only_with_overwrite(
    trained, config_file, tmp_path, capsys, args, earlier
) -> None:
    """Refused before any work: exit status 2, one line naming the file and --overwrite, and
    the file as it was."""
    import shutil
    from pathlib import Path

    run = shutil.copytree(trained, tmp_path / "run")
    fill = {"run": run, "cfg": config_file, "o": tmp_path / "out"}
    path = Path(earlier.format(**fill))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("an earlier run's output")
    assert main([a.format(**fill) for a in args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--overwrite" in errors[0], errors
    assert str(path) in errors[0] or str(path.parent) in errors[0], errors
    assert path.read_text() == "an earlier run's output"


def test_overwrite_replaces_an_earlier_report(trained, config_file, tmp_path) -> None:
    out = tmp_path / "e"
    args = ["evaluate", "--model", str(trained), "--config", str(config_file), "--out", str(out)]
    out.mkdir()
    (out / "evaluation.json").write_text("{}")
    assert main([*args, "--overwrite"]) == 0
    assert "overall" in json.loads((out / "evaluation.json").read_text())


def test_each_domain_evaluated_gets_its_own_default_folder(trained, config_file, tmp_path) -> None:
    import shutil

    # Without the reports other tests wrote into the shared run.
    run = shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("evaluation-*"))
    base = ["evaluate", "--model", str(run), "--config", str(config_file)]
    for domain in ("d0", "d1"):
        assert main([*base, "--domain", domain]) == 0
        report = json.loads((run / f"evaluation-test-{domain}" / "evaluation.json").read_text())
        assert list(report["domains"]) == [domain]
    assert main(base) == 0 and (run / "evaluation-test" / "evaluation.json").is_file()
