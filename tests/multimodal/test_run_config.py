"""The run config: read once, overrides applied, parsed into typed sections."""

from __future__ import annotations

import pytest
import yaml

from multimodal.core.config import config_hash
from multimodal.data.spec import DatasetSpec
from multimodal.engine.config import TrainConfig
from multimodal.experiments.config import RunConfig, TransferConfig, load_run_config

CONFIG = {
    "data": {"path": "synthetic", "options": {"samples_per_domain": 10}},
    "encoders": {"tab": {"name": "tabular_mlp", "numerical": ["x"]}},
    "fusion": {"name": "concat", "dim": 8},
    "head": {"num_classes": 3},
    "train": {"lr": "3e-4", "epochs": 2},
    "transfer": {"k_shot": 4, "adapt": {"strategy": "full", "lr": "1e-3"}},
    "seed": 5,
}


def test_sections_are_typed_and_stages_derive_from_train(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    run = RunConfig.from_dict(load_run_config(path, ["fusion.dim=16"]))
    assert isinstance(run.data, DatasetSpec) and run.data.options == {"samples_per_domain": 10}
    assert isinstance(run.train, TrainConfig) and run.train.lr == 3e-4 and run.train.seed == 5
    assert isinstance(run.transfer, TransferConfig) and run.transfer.k_shot == 4
    assert run.transfer.adapt == {"strategy": "full", "lr": 1e-3}
    assert run.model.fusion == {"name": "concat", "dim": 16}
    stage = run.stage(**run.transfer.adapt, output_dir="out")
    assert (stage.strategy, stage.lr, stage.epochs, stage.output_dir) == ("full", 1e-3, 2, "out")
    assert run.train.strategy == "full" and run.train.output_dir is None  # the base is unchanged
    # what is recorded and hashed is the mapping as given, overrides applied
    assert run.to_dict()["fusion"]["dim"] == 16
    assert config_hash(run.to_dict()) == config_hash(
        {**CONFIG, "fusion": {"name": "concat", "dim": 16}}
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "transfer",
            {"k_shots": 2},
            "unknown key 'transfer.k_shots'; close matches: \\['k_shot'\\]",
        ),
        ("transfer", {"scratch": {"epoch": 2}}, "unknown key 'transfer.scratch.epoch'"),
        (
            "fusion",
            {"name": "concat", "dimm": 8},
            "unknown key 'fusion.dimm'; close matches: \\['dim'\\]",
        ),
        (
            "encoders",
            {"tab": {"name": "tabular_mlp", "numericl": []}},
            "unknown key 'encoders.tab.numericl'",
        ),
        ("data", {"colums": {}}, "unknown key 'data.colums'"),
        ("trian", {}, "unknown key 'trian'; close matches: \\['train'"),
    ],
)
def test_unknown_keys_fail_with_close_matches(key, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({**CONFIG, key: value})
