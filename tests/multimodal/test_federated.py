"""Federated training on Flower: FedAvg is the size-weighted mean of the clients' weights,
FedBN keeps normalisation layers on their clients, one client is centralised training,
and the centralised references and the config are checked."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

# find_spec, not importorskip: the import would cost seconds at collection.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None,
    reason="federated training needs the federated extra (pip install -e '.[federated]')",
)

from multimodal.cli import main  # noqa: E402
from multimodal.experiments.config import RunConfig  # noqa: E402
from multimodal.experiments.federated import (  # noqa: E402
    FederateConfig,
    Federation,
    federate,
    local_round,
    norm_keys,
    shared_keys,
)
from tests.multimodal.tiny_run import tiny_run  # noqa: E402

DATA = {
    "path": "synthetic",
    "options": {"samples_per_domain": 48, "domains": 4, "image_size": 16, "audio_seconds": 0.25},
}


def _config(strategy: str, clients: list[list[str]], rounds: int = 1, **train: object) -> dict:
    config = tiny_run(data=DATA, train={"epochs": 1, "batch_size": 8, "lr": 0.05, "progress": False,
                                        "warmup_ratio": 0.0, "scheduler": "constant", "strategy": "head", **train},
                      transfer={"k_shot": 2, "episodes": 1, "adapt": {"epochs": 1, "strategy": "head"}})  # fmt: skip
    config["federate"] = {"strategy": strategy, "clients": clients, "held_out": ["d3"], "rounds": rounds,
                          "local_epochs": 2, "num_cpus": 1}  # fmt: skip
    return config


def _federation(config: dict) -> Federation:
    run = RunConfig.from_dict(config)
    return Federation.build(run, FederateConfig.from_run(run))


def _by_hand_round(fedn: Federation, starts: list[dict], round_index: int) -> list[dict]:
    """Each client's weights after training one round from ``starts[c]``."""
    out = []
    for c, start in enumerate(starts):
        model = copy.deepcopy(fedn.initial)
        model.load_state_dict(start)
        local_round(fedn, model, c, round_index)
        out.append({k: v.clone() for k, v in model.state_dict().items()})
    return out


def _mean(states: list[dict], sizes: list[int], keys: list[str]) -> dict:
    total = sum(sizes)
    return {
        k: sum(s[k].double() * n for s, n in zip(states, sizes, strict=True)) / total for k in keys
    }


def test_shared_keys_leave_frozen_encoders_and_under_fedbn_the_norm_layers() -> None:
    fedn = _federation(_config("fedbn", [["d0"], ["d1", "d2"]]))
    model, train = fedn.initial, fedn.run.train
    norms = norm_keys(model)
    assert any(".combine.mlp." in k for k in norms)  # concat's LayerNorm
    avg, bn = shared_keys(model, "fedavg", train), shared_keys(model, "fedbn", train)
    assert not any(k.startswith("encoders.") for k in avg)  # strategy head: encoders frozen
    assert set(avg) - set(bn) == {k for k in norms if not k.startswith("encoders.")}
    assert not set(bn) & norms
    full = shared_keys(model, "fedavg", dataclass_replace(train, strategy="full"))
    assert any(k.startswith("encoders.") for k in full)


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_config_errors_name_the_domains_and_the_strategy() -> None:
    with pytest.raises(ValueError, match="both a client's and held out"):
        _federation(_config("fedavg", [["d0"], ["d3"]]))
    with pytest.raises(ValueError, match=r"domains \['d9'\] are not in the data"):
        _federation(_config("fedavg", [["d9"]]))
    with pytest.raises(ValueError, match="federate.strategy must be one of"):
        _federation(_config("fedsgd", [["d0"]]))


def test_pooled_reference_trains_on_every_clients_rows_and_the_cli_writes_its_json(
    tmp_path, capsys
) -> None:
    import yaml

    config = _config("pooled", [["d0"], ["d1"]])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert (
        main(
            [
                "federate",
                "--config",
                str(tmp_path / "c.yaml"),
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "out" / "federated.json").read_text())
    assert [c["domains"] for c in result["clients"]] == [["d0"], ["d1"]]
    assert all(0 <= c["test"] <= 1 for c in result["clients"])
    assert result["held_out"]["domains"] == ["d3"] and len(result["held_out"]["episodes"]) == 1
    assert (tmp_path / "out" / "model" / "checksums.json").exists()
    assert "held out d3: zero-shot" in capsys.readouterr().out


@pytest.mark.slow
def test_two_client_one_round_fedavg_is_the_size_weighted_mean_of_their_weights() -> None:
    config = _config("fedavg", [["d0"], ["d1", "d2"]])
    result = federate(config)
    fedn = _federation(config)
    sizes = [len(s["train"]) for s in fedn.client_splits]
    assert sizes[1] > sizes[0] and [c["rows"] for c in result["clients"]] == sizes
    initial = fedn.initial.state_dict()
    trained = _by_hand_round(fedn, [initial, initial], 0)
    keys = shared_keys(fedn.initial, "fedavg", fedn.run.train)
    assert sorted(result["global_state"]) == sorted(keys)
    expected = _mean(trained, sizes, keys)
    for k in keys:
        torch.testing.assert_close(
            result["global_state"][k].double(), expected[k], atol=1e-5, rtol=1e-5
        )
    moved = [k for k in keys if not torch.allclose(trained[0][k], trained[1][k])]
    assert moved  # the clients differ, so the weighting matters


@pytest.mark.slow
def test_fedbn_keeps_each_clients_norm_layers_unsent_and_its_own() -> None:
    # SGD: Adam would turn float-order noise in the aggregate into visible differences
    config = _config("fedbn", [["d0"], ["d1", "d2"]], rounds=2, optimizer="sgd", lr=0.1)
    result = federate(config)
    fedn = _federation(config)
    sizes = [len(s["train"]) for s in fedn.client_splits]
    keys, norms = shared_keys(fedn.initial, "fedbn", fedn.run.train), norm_keys(fedn.initial)
    assert not set(result["global_state"]) & norms  # never sent, so never aggregated
    initial = fedn.initial.state_dict()
    first = _by_hand_round(fedn, [initial, initial], 0)
    global1 = _mean(first, sizes, keys)
    # round 2: the global weights, each client's own normalisation layers from round 1
    starts = [
        {**initial, **{k: v.float() for k, v in global1.items()}, **{k: first[c][k] for k in norms}}
        for c in range(2)
    ]
    expected = _mean(_by_hand_round(fedn, starts, 1), sizes, keys)
    for k in keys:
        torch.testing.assert_close(
            result["global_state"][k].double(), expected[k], atol=1e-5, rtol=1e-5
        )
    # had the clients taken the server's normalisation layers instead, round 2 would differ
    shared_norms = [{**s, **{k: initial[k] for k in norms}} for s in starts]
    other = _mean(_by_hand_round(fedn, shared_norms, 1), sizes, keys)
    assert any(not torch.allclose(other[k], expected[k], atol=1e-5) for k in keys)


@pytest.mark.slow
def test_one_client_federation_is_centralised_training_on_its_rows() -> None:
    config = _config("fedavg", [["d1"]])
    result = federate(config)
    fedn = _federation(config)
    model = copy.deepcopy(fedn.initial)
    from multimodal.engine import FitData, fit

    fit(model, FitData(fedn.run.data, fedn.client_splits[0]["train"]), fedn.local_config(0))
    central = model.state_dict()
    assert result["global_state"]
    # Ray runs the client with one thread, this process with two: float sums differ in order
    for k, v in result["global_state"].items():
        torch.testing.assert_close(v, central[k], atol=1e-5, rtol=1e-5)
