from __future__ import annotations

import pytest

from multimodal.experiments.search import fusion_parameters, fusion_search
from tests.multimodal.tiny_run import tiny_run

optuna = pytest.importorskip("optuna", reason="the distributed extra is not installed")


@pytest.mark.slow
def test_fusion_search_samples_each_fusions_own_space_prunes_and_transfers_the_best(
    tmp_path,
) -> None:
    config = tiny_run(train={"epochs": 3, "batch_size": 16, "lr": 0.01, "progress": False})
    # 15 validation rows, not 7: with fewer, trials tie at a rung and none is pruned
    config["data"]["options"]["samples_per_domain"] = 96
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    space = {
        "dim": {"choices": [8, 16]},
        "num_experts": {"choices": [2, 3]},
        "dropout": {"low": 0.0, "high": 0.2},
    }
    result = fusion_search(config, ["concat", "moe", "late"], trials=6, space=space, storage=storage,
                           study_name="tiny", min_epochs=1, eta=2)  # fmt: skip
    assert len(result.trials) == 6
    for t in result.trials:
        names = {k.split(".")[1] for k in t["params"]}
        assert names == (
            {"dim", "num_experts", "dropout"} if t["fusion"] == "moe" else {"dim", "dropout"}
        )
        assert all(k.startswith(f"{t['fusion']}.") for k in t["params"])
    finished = [t for t in result.trials if t["state"] == "COMPLETE"]
    best = max(finished, key=lambda t: t["value"])
    assert (result.chosen, result.value) == (best["fusion"], best["value"])
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    assert pruned and all(t["epochs"] < 3 for t in pruned)  # weak trials stop early
    assert result.target["config"]["fusion"] == {
        **config["fusion"],
        "name": result.chosen,
        **result.params,
    }
    assert set(result.target["targets"]) == {"d1"}
    # The study lives in the RDB: a second process (here: call) joins it and adds trials.
    again = fusion_search(config, ["concat", "moe", "late"], trials=2, space=space, storage=storage,
                          study_name="tiny", evaluate_target=False)  # fmt: skip
    assert len(again.trials) == 8 and again.target == {}
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 8


def test_fusion_parameters_come_from_the_constructor() -> None:
    assert {"num_experts", "top_k", "dim", "dropout"} <= fusion_parameters("moe")
    assert "num_experts" not in fusion_parameters("concat")
