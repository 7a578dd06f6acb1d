"""k-shot episodes, the feature store they share, the adaptation registry, and the
statistics of their tables, on tiny runs and hand-made numbers."""

from __future__ import annotations

import json
import math

import pytest

from tests.multimodal.tiny_run import tiny_run

T_975_2 = 4.302653  # t(0.975, df=2)


def _three_domains(**sections):
    config = tiny_run(**sections)
    config["data"]["options"]["domains"] = 3
    config["transfer"].update(source=["d0"], target=["d1", "d2"])
    return config


def test_encoders_run_once_per_split_in_a_head_only_transfer_with_five_episodes(
    monkeypatch,
) -> None:
    import multimodal as mm
    from multimodal.engine.cache import FEATURES
    from multimodal.experiments.transfer import stages, transfer_adaptations

    config = _three_domains(train={"strategy": "head", "epochs": 1})
    config["transfer"].update(episodes=5, k_shot=2, adapt={"epochs": 2}, scratch={"epochs": 1})
    FEATURES.clear()  # another test may have stored the same encoders' outputs
    rows: dict[str, int] = {}
    built = []
    build = stages.build_model

    def counting_build(*args, **kwargs):
        model = build(*args, **kwargs)
        if not built:  # the source model; adapted copies share its encoders and their hooks
            for name, encoder in model.encoders.items():
                rows[name] = 0

                def count(module, inputs, output, name=name):
                    rows[name] += output.tokens.shape[0]

                encoder.register_forward_hook(count)
        built.append(model)
        return model

    monkeypatch.setattr(stages, "build_model", counting_build)
    report = transfer_adaptations(config, ["head"])["head"]
    dsd = mm.load_dataset(mm.DatasetSpec.from_dict(config["data"]))
    sizes = {s: {d: sum(x == d for x in dsd[s]["domain"]) for d in ("d0", "d1", "d2")} for s in dsd}
    # each split the source encoders see, once: the source's train, validation and test, and
    # each target's train (every episode's rows come from it) and test
    once = sum(sizes[s]["d0"] for s in ("train", "validation", "test"))
    once += sum(sizes[s][t] for s in ("train", "test") for t in ("d1", "d2"))
    assert rows == {"tabular": once, "text": once}
    assert report.episodes == 5 and len(report.targets["d2"].episodes) == 5
    # per target the 5 adaptation fits run together and compute the train split once; the 5
    # adapted models' target-test and source-test evaluations (together) read the zero-shot's
    assert report.feature_store["hits"] == 2 * 2
    assert report.episode_fits["adapt d1"] == "batched"


def test_episode_rows_are_common_to_fusions_and_adaptations_and_differ_between_episodes(
    tmp_path,
) -> None:
    from multimodal.experiments.bench import Suite, run_benchmark

    base = _three_domains(train={"epochs": 1})
    base["transfer"].update(episodes=2, k_shot=2, adapt={"epochs": 1}, scratch={"epochs": 1})
    base.pop("seed")
    suite = Suite(name="episodes", base=base, fusions=["concat", "gated"], adaptations=["head", "full"], seeds=1,
                  k_shot=[2], unimodal=False)  # fmt: skip
    rows = run_benchmark(suite, tmp_path, progress=False)
    assert len(rows) == 2 * 2 * 2 * 2  # fusions x adaptations x targets x episodes
    stored = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    drawn = {
        (unit["unit"]["fusion"], adaptation, target, e["episode"]): tuple(e["rows"])
        for unit in stored for adaptation, report in unit["reports"].items()
        for target, result in report["targets"].items() for e in result["episodes"]
    }  # fmt: skip
    for target in ("d1", "d2"):
        for episode in (0, 1):
            same = {v for (_, _, t, e), v in drawn.items() if (t, e) == (target, episode)}
            assert len(same) == 1 and len(next(iter(same))) == 8  # 2 rows x 4 classes
        assert drawn[("concat", "head", target, 0)] != drawn[("concat", "head", target, 1)]
    assert drawn[("concat", "head", "d1", 0)] != drawn[("concat", "head", "d2", 0)]


def test_adaptation_registry_lists_built_ins_and_runs_a_new_arm() -> None:
    from multimodal.experiments.adaptations import (
        create_adaptation,
        list_adaptations,
        register_adaptation,
    )
    from multimodal.experiments.adaptations.finetune import FineTune
    from multimodal.experiments.transfer import transfer_adaptations

    assert {"head", "top_k", "full", "lora", "dann", "coral", "source_only"} <= set(
        list_adaptations()
    )
    with pytest.raises(ValueError, match="Did you mean 'full'"):
        create_adaptation("fulll")

    @register_adaptation("head_slow_test")
    class SlowHead(FineTune):  # a new arm: the head strategy at a tenth of the lr
        strategy = "head"

        def overrides(self, transfer):
            return {**super().overrides(transfer), "lr": 1e-4}

    config = tiny_run(
        train={"epochs": 1},
        transfer={"k_shot": 2, "episodes": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}},
    )
    reports = transfer_adaptations(config, ["head", "head_slow_test"])
    slow, head = reports["head_slow_test"].targets["d1"], reports["head"].targets["d1"]
    assert slow.zero_shot == head.zero_shot and [e.rows for e in slow.episodes] == [
        e.rows for e in head.episodes
    ]
    assert slow.episodes[0].adapt_samples == 8


def _episode_rows(values: dict[tuple[str, int], list[float]], scratch: float = 0.3) -> list[dict]:
    """Result rows of one target: (fusion, seed) -> adapted per episode."""
    return [{"suite": "s", "source_domains": "s", "target": "t1", "k_shot": 2, "fusion": fusion, "adaptation": "head",
             "seed": seed, "episode": e, "metric": "accuracy", "source": 0.9, "zero_shot": 0.4, "adapted": v,
             "scratch": scratch, "transfer_gain": v - scratch, "forgetting": 0.1, "adapt_samples": 8,
             "test_samples": 100, "source_test_samples": 100, "config_hash": "x", "wall_s": 1.0}
            for (fusion, seed), episodes in values.items() for e, v in enumerate(episodes)]  # fmt: skip


def test_the_ci_counts_seeds_and_the_episodes_nested_in_them_by_hand() -> None:
    from multimodal.experiments.bench import summarize

    concat = {("concat", 0): [0.50, 0.60], ("concat", 1): [0.55, 0.75], ("concat", 2): [0.70, 0.70]}
    moe = {
        ("moe", s): [v + d for v, d in zip(vs, (0.02, 0.04), strict=True)]
        for (_, s), vs in concat.items()
    }
    summary = {e["fusion"]: e for e in summarize(_episode_rows({**concat, **moe}))}
    entry = summary["concat"]
    # seed means 0.55, 0.65, 0.70: mean 0.6333, sd 0.076376; half-width t * sd / sqrt(3)
    assert entry["adapted"]["mean"] == pytest.approx(0.633333, abs=1e-6)
    assert entry["adapted"]["ci"] == pytest.approx(T_975_2 * 0.0763763 / math.sqrt(3), rel=1e-5)
    assert (
        entry["adapted"]["ci_over"] == "seeds"
        and entry["episodes"] == 2
        and entry["seeds"] == [0, 1, 2]
    )
    # the paired difference is 0.03 in every seed: no spread, p = 0 and a CI of zero
    cmp = summary["moe"]["adapted_vs_concat"]
    assert cmp["mean"] == pytest.approx(0.03) and cmp["ci"] == pytest.approx(0.0, abs=1e-12)
    # adapted - scratch per seed: 0.25, 0.35, 0.40 -> t = 0.3333 / (0.0763763 / sqrt 3) on 2 df
    gain = entry["transfer_gain"]
    from scipy import stats

    assert gain["p_value"] == pytest.approx(
        2 * stats.t.sf(0.333333 / (0.0763763 / math.sqrt(3)), 2), rel=1e-4
    )
    # three tests in the table (two gains, one against concat): Holm multiplies the smallest by 3
    found = (gain, summary["moe"]["transfer_gain"], cmp)
    smallest = min(found, key=lambda c: c["p_value"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, 3 * smallest["p_value"]))
    # the MDD: 80% power for a t-test of standard error sd / sqrt 3 on 2 df at 0.05 / 3
    se, crit = 0.0763763 / math.sqrt(3), stats.t.ppf(1 - 0.05 / 6, 2)
    assert gain["tests"] == 3 and stats.nct.sf(crit, 2, gain["mdd"] / se) == pytest.approx(
        0.8, abs=1e-3
    )
    assert math.isnan(cmp["mdd"])  # no spread: no standard error to size it by
    from multimodal.experiments.bench import summary_table

    assert "| 100 | 2 | 3 |" in summary_table(list(summary.values()))  # n, episodes, seeds


def test_one_seed_of_many_episodes_gets_its_ci_from_the_episodes() -> None:
    from multimodal.experiments.stats import two_level

    stat = two_level({0: [0.5, 0.6, 0.7]})
    assert stat["ci_over"] == "episodes" and stat["ci"] == pytest.approx(
        T_975_2 * 0.1 / math.sqrt(3), rel=1e-5
    )


def test_holm_by_hand() -> None:
    from multimodal.experiments.stats import holm

    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert holm([0.04, 0.01, math.nan, 0.03]) == pytest.approx(
        [0.06, 0.03, math.nan, 0.06], nan_ok=True
    )


def test_minimum_detectable_difference_is_the_difference_found_with_80_percent_power() -> None:
    from scipy import stats

    from multimodal.experiments.stats import detectable

    # many degrees of freedom: the normal approximation (z_0.975 + z_0.8) * se
    assert detectable(0.01, 10_000) == pytest.approx(0.01 * (1.959964 + 0.841621), rel=1e-3)
    mdd = detectable(0.02, 4, alpha=0.01)
    crit = stats.t.ppf(0.995, 4)
    assert stats.nct.sf(crit, 4, mdd / 0.02) == pytest.approx(0.8, abs=1e-4)
    assert detectable(0.02, 4, alpha=0.01) > detectable(0.02, 4, alpha=0.05)


def test_scratch_copies_one_built_model_only_when_no_encoder_fits_on_rows() -> None:
    import copy

    from multimodal.experiments.config import RunConfig
    from multimodal.experiments.transfer import ScratchStage, TransferPlan
    from multimodal.modeling.model import build_model
    from tests.conftest import TINY_ENCODERS

    image = {"name": "timm_image", **TINY_ENCODERS["timm_image"]}
    config = tiny_run(transfer={"k_shot": 2, "episodes": 2})
    config["encoders"] = {"image": image}
    config["data"]["columns"] = {"image": "image"}
    plan = TransferPlan.build(RunConfig.from_dict(config))
    first, second = (ScratchStage(plan, "d1", e) for e in plan.episodes["d1"])
    copied = first.initial_model(share_encoders=True)
    again = second.initial_model(share_encoders=True)
    assert (
        plan.scratch_template is not False and copied.encoders is again.encoders
    )  # frozen: shared
    fresh = build_model(RunConfig.from_dict(config).model.to_dict(), seed=0)
    state = copy.deepcopy(copied.state_dict())
    assert all(torch_equal(state[k], v) for k, v in fresh.state_dict().items())
    assert second.initial_model(share_encoders=False).encoders is not copied.encoders
    # a tokenizer trained on the rows: every episode builds its own model
    text_plan = TransferPlan.build(RunConfig.from_dict(tiny_run(transfer={"k_shot": 2})))
    ScratchStage(text_plan, "d1", text_plan.episodes["d1"][0]).initial_model(share_encoders=False)
    assert text_plan.scratch_template is False


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
