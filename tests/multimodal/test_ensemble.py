from __future__ import annotations

import json

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.analysis.ensemble import evaluate_ensemble, uniform_soup
from multimodal.cli import main
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.tiny_run import tiny_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: concat with seeds 0 and 1, and moe with seed 0."""
    out = {}
    for name, fusion, seed in (
        ("concat-0", "concat", 0),
        ("concat-1", "concat", 1),
        ("moe-0", "moe", 0),
    ):
        config = tiny_run(
            fusion={"name": fusion, "dim": 16, **({"num_experts": 2} if fusion == "moe" else {})}
        )
        spec = mm.DatasetSpec.from_dict(config["data"])
        dsd = mm.load_dataset(spec)
        view = mm.data.RowView(dsd["train"], spec, "train")
        model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=seed)
        engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]),
                     train_config(config, epochs=2, seed=seed))  # fmt: skip
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = folder
    return out, spec, dsd


def test_ensemble_of_one_is_the_model_and_members_average(runs) -> None:
    folders, spec, dsd = runs
    model = mm.MultimodalModel.from_pretrained(folders["concat-0"])
    alone = engine.evaluate(model, dsd["test"], spec)
    rows = evaluate_ensemble([model], dsd["test"], spec)
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == alone["accuracy"]
    assert rows[1]["loss"] == pytest.approx(alone["loss"], rel=1e-5)  # NLL of the softmax = CE
    members = [
        mm.MultimodalModel.from_pretrained(folders[n]) for n in ("concat-0", "concat-1", "moe-0")
    ]
    rows = evaluate_ensemble(members, dsd["test"], spec, names=["a", "b", "c"])
    assert [r["model"] for r in rows] == ["a", "b", "c", "ensemble"]
    # The ensemble's loss is at most the mean member loss (the log is concave).
    assert rows[-1]["loss"] <= sum(r["loss"] for r in rows[:3]) / 3 + 1e-6


def test_soup_of_identical_runs_is_the_run_and_architectures_must_match(runs) -> None:
    folders, spec, dsd = runs
    a = mm.MultimodalModel.from_pretrained(folders["concat-0"])
    b = mm.MultimodalModel.from_pretrained(folders["concat-1"])
    same = uniform_soup([a, mm.MultimodalModel.from_pretrained(folders["concat-0"])])
    for key, value in a.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key
    soup = uniform_soup([a, b])
    # Every floating-point tensor is the mean of the two runs'.
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (a.state_dict()[key] + b.state_dict()[key]) / 2), key
    assert any(
        not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()
    )  # seeds differ
    with pytest.raises(ValueError, match="model 1 is another architecture than model 0"):
        uniform_soup([a, mm.MultimodalModel.from_pretrained(folders["moe-0"])])


def test_ensemble_cli_reports_members_ensemble_and_soup(runs, tmp_path, capsys) -> None:
    folders, spec, dsd = runs
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny_run()))
    args = ["ensemble", "--models", str(folders["concat-0"]), str(folders["concat-1"]), "--config", str(config),
            "--save-soup", str(tmp_path / "soup"), "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["model"] for r in rows][-2:] == ["ensemble", "soup"]
    soup = mm.MultimodalModel.from_pretrained(tmp_path / "soup")
    assert engine.evaluate(soup, dsd["test"], spec)["accuracy"] == rows[-1]["accuracy"]
    assert "ensemble" in capsys.readouterr().out
