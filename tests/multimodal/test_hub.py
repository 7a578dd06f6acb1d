"""Hub sharing and model cards: a model in the local HF cache loads offline through
snapshot_download with bit-identical predictions, a tampered download is refused, push_to_hub
hands over exactly the model files and its card, and the card's model-index holds the
run's per-domain results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import multimodal as mm
from multimodal.experiments.config import model_config
from tests.multimodal.tiny_run import tiny_data, tiny_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _saved(tmp_path: Path) -> tuple[Path, list[dict]]:
    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    view = mm.data.RowView(dsd["test"], spec, "test")
    return model.save_pretrained(tmp_path / "saved"), [view[i] for i in range(8)]


def _in_cache(saved: Path, cache: Path, repo: str = "org/name", ref: str = "main") -> Path:
    """``saved`` placed in an HF cache in the hub's own layout (refs -> snapshots/<commit>)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    shutil.copytree(saved, snapshot, dirs_exist_ok=True)
    return snapshot


SCRIPT = """
import json, sys, torch
import multimodal as mm
from tests.multimodal.tiny_run import tiny_data
_, spec, dsd, _ = tiny_data()
view = mm.data.RowView(dsd["test"], spec, "test")
local, rows = sys.argv[1], [view[i] for i in range(8)]
hub = mm.MultimodalModel.from_pretrained("org/name", revision=sys.argv[2])
mine = mm.MultimodalModel.from_pretrained(local)
a, b = hub.predict(rows)["logits"], mine.predict(rows)["logits"]
print(json.dumps({"equal": bool(torch.equal(a, b)), "rows": len(a)}))
"""


@pytest.mark.slow
def test_a_model_in_the_local_hf_cache_loads_offline_bit_identical(tmp_path) -> None:
    saved, _ = _saved(tmp_path)
    _in_cache(saved, tmp_path / "cache", ref="v1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(saved), "v1"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"equal": True, "rows": 8}


def test_a_downloaded_folder_with_a_tampered_weight_file_is_refused(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    saved, _ = _saved(tmp_path)
    snapshot = _in_cache(saved, tmp_path / "cache")
    weights = snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        mm.core.io.CorruptCheckpointError, match=r"checksum mismatch in \['model.safetensors'\]"
    ):
        mm.MultimodalModel.from_pretrained("org/name")


def test_push_to_hub_hands_over_exactly_the_model_files_and_its_card(tmp_path, monkeypatch) -> None:
    from huggingface_hub import HfApi, ModelCard

    from multimodal.core import hub_access

    monkeypatch.setattr(
        hub_access, "ensure_reachable_or_offline", lambda warn=True: None
    )  # HfApi is mocked
    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    expected = sorted(p.relative_to(d).as_posix() for d in [model.save_pretrained(tmp_path / "ref")]
                      for p in d.rglob("*") if p.is_file())  # fmt: skip
    seen: dict = {}

    def upload_folder(self, *, folder_path, repo_id, revision=None, commit_message=None, **_):
        folder = Path(folder_path)
        seen.update(repo=repo_id, revision=revision, files=sorted(p.relative_to(folder).as_posix()
                    for p in folder.rglob("*") if p.is_file()), card=ModelCard.load(folder / "README.md"))  # fmt: skip
        return "commit"

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: seen.setdefault("created", repo_id)
    )
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert model.push_to_hub("org/tiny", revision="dev") == "commit"
    assert (
        seen["created"] == "org/tiny" and seen["repo"] == "org/tiny" and seen["revision"] == "dev"
    )
    assert seen["files"] == expected and "README.md" in expected and "model.safetensors" in expected
    assert seen["card"].data.library_name == "transferfuse"


def test_model_cards_hold_the_per_domain_results_of_train_and_transfer(tmp_path) -> None:
    from huggingface_hub import ModelCard

    from multimodal.experiments.runs import train_run
    from multimodal.experiments.transfer import transfer

    config = tiny_run(train={**tiny_run()["train"], "epochs": 1})
    results = train_run(config, tmp_path / "train")
    card = ModelCard.load(tmp_path / "train" / "best_model" / "README.md")
    assert card.data.model_name == "train"
    values = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    domains = "+".join(results["trained_domains"])
    assert values == {(domains, "source test accuracy"): pytest.approx(results["test"]["accuracy"])}
    assert "model-index" in (tmp_path / "train" / "best_model" / "README.md").read_text()

    config = tiny_run(transfer={**tiny_run()["transfer"], "source": ["d0"], "target": ["d1"]},
                      train={**tiny_run()["train"], "epochs": 1}, output_dir=str(tmp_path / "tr"))  # fmt: skip
    transfer(config)
    report = json.loads((tmp_path / "tr" / "report.json").read_text())
    source = ModelCard.load(
        tmp_path / "tr" / "source" / "best_model" / "README.md"
    ).data.eval_results
    got = {(r.dataset_config, r.metric_name): r.metric_value for r in source}
    assert got[("d0", "source test accuracy")] == pytest.approx(report["source"])
    assert got[("d1", "zero-shot accuracy")] == pytest.approx(report["targets"]["d1"]["zero_shot"])
    arm = report["config"]["transfer"]["adaptation"]
    adapted = ModelCard.load(
        tmp_path / "tr" / f"adapt-{arm}-d1" / "best_model" / "README.md"
    ).data.eval_results
    got = {(r.dataset_config, r.metric_name): r.metric_value for r in adapted}
    first = report["targets"]["d1"]["episodes"][0]
    assert got == {("d1", "adapted accuracy"): pytest.approx(first["adapted"]),
                   ("d0", "forgetting accuracy"): pytest.approx(first["forgetting"])}  # fmt: skip


@pytest.fixture
def hub_out_of_reach(monkeypatch):
    """The hub's endpoint a closed local port: refused at once, as an unreachable hub is
    refused or times out. Whatever going offline changes is put back afterwards."""
    import datasets.config
    from huggingface_hub import constants

    from multimodal.core import hub_access

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_access, "_switched", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_access._probe.cache_clear()
    yield
    hub_access._probe.cache_clear()


def test_with_the_hub_out_of_reach_hub_ids_fail_in_one_line_without_retries(
    hub_out_of_reach, tmp_path, capsys
) -> None:
    """A hub dataset, a hub model and a push: one error line each, exit status 2, and no
    retry lines (huggingface_hub retries for a minute unless it is told it is offline)."""
    import yaml

    from multimodal.cli import main
    from tests.multimodal.tiny_run import tiny_run

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run()))
    tiny_model_dir, _ = _saved(tmp_path)
    cases = [
        (["train", "--config", str(config), "--output-dir", str(tmp_path / "o"),
          "data.path=nosuchorg/nosuchdataset"], "'nosuchorg/nosuchdataset' is not a local path"),
        (["predict", "--model", "nosuchorg/nosuchmodel", "--config", str(config)],
         "'nosuchorg/nosuchmodel' is not a local path"),
        (["push", "--model", str(tiny_model_dir), "--repo-id", "org/name"], "needs the hub"),
    ]  # fmt: skip
    for args, fragment in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and fragment in errors[0] and "out of reach" in errors[0], err
        assert "Retrying" not in err and "Traceback" not in err
