from __future__ import annotations

import json

import pytest

from multimodal.cli import main
from multimodal.experiments.lineage import history, readapt
from multimodal.experiments.runs import train_run
from tests.multimodal.tiny_run import tiny_run


def test_adapt_writes_a_linked_version_with_comparison_and_history(tmp_path, capsys) -> None:
    config = tiny_run()
    config["data"]["keep_domains"] = ["d0"]
    train_run(config, tmp_path / "v1")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "v1").rglob("*") if p.is_file()}
    new_data = {**tiny_run()["data"], "keep_domains": ["d1"]}
    comparison = readapt(tmp_path / "v1", new_data, tmp_path / "v2", strategy="full", budget=4,
                         train={"epochs": 10, "lr": 0.01})  # fmt: skip
    lineage = json.loads((tmp_path / "v2" / "lineage.json").read_text())
    assert lineage["parent"] == str((tmp_path / "v1").resolve()) and lineage["version"] == 2
    assert lineage["train_rows"] == 16  # 4 per class, 4 classes
    assert comparison["new_data"]["new"]["accuracy"] >= comparison["new_data"]["old"]["accuracy"]
    ref = comparison["reference"]  # the parent's own test split (d0)
    assert ref["forgetting"] == pytest.approx(ref["old"]["accuracy"] - ref["new"]["accuracy"])
    assert (tmp_path / "v2" / "best_model" / "config.json").is_file()
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "v1").rglob("*") if p.is_file()}
    assert after == before  # the parent is untouched
    with pytest.raises(FileExistsError, match="never overwrites"):
        readapt(tmp_path / "v1", new_data, tmp_path / "v2")
    # A third version, adapted from the second, through the CLI.
    spec = tmp_path / "b.yaml"
    spec.write_text(json.dumps(new_data))
    assert main(["readapt", "--model", str(tmp_path / "v2"), "--data", str(spec), "--strategy", "head",
                 "--budget", "4", "--epochs", "3", "--out", str(tmp_path / "v3")]) == 0  # fmt: skip
    chain = history(tmp_path / "v3")
    assert [e["version"] for e in chain] == [1, 2, 3]
    assert (
        chain[0]["test"]["accuracy"]
        == json.loads((tmp_path / "v1" / "results.json").read_text())["test"]["accuracy"]
    )
    assert chain[2]["strategy"] == "head" and "forgetting" in chain[2]
    capsys.readouterr()
    assert main(["history", str(tmp_path / "v3")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("v1") and lines[2].startswith("v3") and "forgetting" in lines[2]


def test_rehearsal_mixes_a_seeded_sample_of_the_parents_training_rows(tmp_path) -> None:
    from multimodal.data.loading import load_dataset
    from multimodal.data.spec import DatasetSpec
    from multimodal.experiments.lineage import rehearsal_mix

    config = tiny_run()
    config["data"]["keep_domains"] = ["d0"]
    train_run(config, tmp_path / "v1")
    new_data = {**tiny_run()["data"], "keep_domains": ["d1"]}
    new_train = load_dataset(DatasetSpec.from_dict(new_data))["train"]
    parent_train = load_dataset(DatasetSpec.from_dict(config["data"]))["train"]
    mixed = rehearsal_mix(new_train, tmp_path / "v1", 10, seed=3)
    assert len(mixed) == len(new_train) + 10
    domains = mixed["domain"]
    assert domains.count("d0") == 10 and domains.count("d1") == len(new_train)
    parent_rows = {(r["text"], r["label"]) for r in parent_train}
    assert all((r["text"], r["label"]) in parent_rows for r in mixed if r["domain"] == "d0")
    assert rehearsal_mix(new_train, tmp_path / "v1", 10, seed=3)["text"] == mixed["text"]
    assert rehearsal_mix(new_train, tmp_path / "v1", 10, seed=4)["text"] != mixed["text"]
    comparison = readapt(tmp_path / "v1", new_data, tmp_path / "v2", strategy="head", budget=4,
                         train={"epochs": 2}, rehearsal=8)  # fmt: skip
    lineage = json.loads((tmp_path / "v2" / "lineage.json").read_text())
    assert lineage["rehearsal_rows"] == 8 and lineage["train_rows"] == 16 + 8
    assert comparison["reference"] is not None


def test_readapt_tta_adapts_without_labels_and_records_the_method(tmp_path) -> None:
    from tests.multimodal.test_adversarial import IMAGE

    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE})
    config["data"]["keep_domains"] = ["d0"]
    config["train"]["epochs"] = 1
    train_run(config, tmp_path / "v1")
    new_data = {**config["data"], "keep_domains": ["d1"]}
    comparison = readapt(tmp_path / "v1", new_data, tmp_path / "v2", tta="bn_adapt")
    lineage = json.loads((tmp_path / "v2" / "lineage.json").read_text())
    assert lineage["strategy"] == "bn_adapt" and comparison["metric"] == "accuracy"
    import torch

    from multimodal.modeling.model import MultimodalModel

    old, new = (MultimodalModel.from_pretrained(tmp_path / v) for v in ("v1", "v2"))
    changed = [k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])]
    assert changed and all("running_" in k or "num_batches_tracked" in k for k in changed)


def test_forgetting_and_rehearsal_see_only_the_rows_the_parent_trained_on(tmp_path, caplog) -> None:
    """A parent trained on transfer.source saw one domain of its data, and a version saw its
    k-shot draw: forgetting is measured, and rehearsal draws, on those rows alone."""
    from multimodal.data.loading import k_shot, load_dataset, select_domains
    from multimodal.data.spec import DatasetSpec
    from multimodal.experiments.lineage import rehearsal_mix

    config = tiny_run(transfer={"source": ["d0"]})
    config["data"]["options"]["domains"] = 3
    train_run(config, tmp_path / "v1")
    spec = DatasetSpec.from_dict(config["data"])
    train = load_dataset(spec)["train"]
    comparison = readapt(tmp_path / "v1", config["data"], tmp_path / "v2", budget=4, domains=["d1"],
                         train={"epochs": 2})  # fmt: skip
    ref = comparison["reference"]
    parent_test = json.loads((tmp_path / "v1" / "results.json").read_text())["test"]  # on d0
    assert ref["old"]["accuracy"] == pytest.approx(parent_test["accuracy"])
    assert ref["domains"] == ["d0"]
    assert "| reference (test: d0) |" in (tmp_path / "v2" / "comparison.md").read_text()

    new_train = select_domains(train, ["d2"])
    mixed = rehearsal_mix(new_train, tmp_path / "v1", 10_000, seed=0)
    assert mixed["domain"].count("d0") == len(select_domains(train, ["d0"]))
    assert set(mixed["domain"]) == {"d0", "d2"}
    # v2 trained on its 4-per-class draw of d1: rehearsal from it gets those 16 rows, with a warning.
    drawn = k_shot(select_domains(train, ["d1"]), 4, 0, spec.label)
    mixed = rehearsal_mix(new_train, tmp_path / "v2", 100, seed=0)
    assert sorted(r["text"] for r in mixed if r["domain"] == "d1") == sorted(drawn["text"])
    assert "trained on 16 rows" in caplog.text

    # --reference-domain without --reference picks domains of the parent's own data.
    (tmp_path / "data.yaml").write_text(json.dumps(config["data"]))
    assert main(["readapt", "--model", str(tmp_path / "v1"), "--data", str(tmp_path / "data.yaml"),
                 "--budget", "4", "--epochs", "1", "--reference-domain", "d2", "--out", str(tmp_path / "v3")]) == 0  # fmt: skip
    v3 = json.loads((tmp_path / "v3" / "comparison.json").read_text())
    assert v3["reference"]["domains"] == ["d2"]
