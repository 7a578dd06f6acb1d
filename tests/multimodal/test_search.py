from __future__ import annotations

from multimodal.experiments.search import successive_halving
from tests.multimodal.tiny_run import tiny_run


def test_successive_halving_keeps_halving_and_grows_the_budget() -> None:
    config = tiny_run(train={"epochs": 1, "batch_size": 16, "lr": 0.01, "progress": False})
    result = successive_halving(
        config, ["concat", "gated", "late"], min_epochs=1, eta=2, evaluate_target=True
    )
    assert [r["epochs"] for r in result.rungs] == [1, 2]
    assert [len(r["scores"]) for r in result.rungs] == [3, 2]
    assert (
        result.rungs[0]["kept"]
        == sorted(result.rungs[0]["scores"], key=result.rungs[0]["scores"].get, reverse=True)[:2]
    )
    assert result.chosen in result.rungs[1]["kept"] and len(result.rungs[1]["kept"]) == 1
    assert result.target["config"]["fusion"]["name"] == result.chosen
    assert set(result.target["targets"]) == {"d1"}
