"""Episodes as a batch dimension (``engine.episodes``): the same models as one fit per
episode, for every fusion; what falls back, and why; the feature store per encoder."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import fusion
from tests.conftest import TINY_ENCODERS
from tests.multimodal.tiny_run import tiny_run

MAIN = ("concat", "cross_attention", "moe")
KWARGS = {"cross_attention": {"num_heads": 2}, "bottleneck": {"num_heads": 2},
          "transformer": {"num_heads": 2}, "moe": {"num_experts": 4}}  # fmt: skip


def _frozen_config(fusion_name: str, **fusion_kwargs) -> dict:
    """Two encoders that fit on no rows (frozen in every stage), dropout on: what the
    batched fits must draw exactly as each fit draws alone."""
    config = tiny_run(
        train={"strategy": "head", "epochs": 2},
        fusion={"name": fusion_name, "dim": 16, "dropout": 0.1, **KWARGS.get(fusion_name, {}), **fusion_kwargs},
        head={"task": "classification", "num_classes": 4, "dropout": 0.1},
        transfer={"k_shot": 3, "episodes": 3, "adapt": {"epochs": 3},
                  "scratch": {"epochs": 3, "strategy": "head"}},
    )  # fmt: skip
    config["encoders"] = {
        "image": {"name": "timm_image", **TINY_ENCODERS["timm_image"]},
        "audio": {"name": "audio_cnn", **TINY_ENCODERS["audio_cnn"]},
    }
    config["data"]["columns"] = {"image": "image", "audio": "audio"}
    config["data"]["options"]["samples_per_domain"] = 80
    return config


def _transfer(config: dict, batch: bool):
    from multimodal.experiments.transfer import transfer_adaptations

    config = copy.deepcopy(config)
    config["transfer"]["batch_episodes"] = batch
    return transfer_adaptations(config, ["head"])["head"]


@pytest.mark.parametrize(
    "name",
    [n if n in MAIN else pytest.param(n, marks=pytest.mark.slow) for n in fusion.list_fusions()],
)
def test_batched_episodes_give_each_episodes_adapted_and_scratch_accuracy(name: str) -> None:
    config = _frozen_config(name)
    batched, sequential = _transfer(config, True), _transfer(config, False)
    # one run: its source fit is alone; every episode stage is batched
    assert batched.episode_fits.pop("source") == "sequential: one episode"
    assert set(batched.episode_fits.values()) == {"batched"}, batched.episode_fits
    assert all(v.startswith("sequential") for v in sequential.episode_fits.values())
    for target, result in batched.targets.items():
        alone = sequential.targets[target]
        assert len(result.episodes) == 3
        for a, b in zip(result.episodes, alone.episodes, strict=True):
            assert a.rows == b.rows
            assert a.adapted == pytest.approx(b.adapted, abs=1e-5)
            assert a.scratch == pytest.approx(b.scratch, abs=1e-5)
            assert a.source_after == pytest.approx(b.source_after, abs=1e-5)
            assert a.adapted_ece == pytest.approx(b.adapted_ece, abs=1e-4)


def _fits(name: str, batched: bool, validation: bool):
    """Three episode fits of one model, with modality dropout and, with ``validation``,
    the best evaluation's weights restored: their fusion and head weights."""
    import multimodal as mm
    from multimodal.engine import FitData, fit
    from multimodal.engine.episodes import fit_episodes
    from multimodal.modeling.model import build_model

    config = _frozen_config(name)
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    model = build_model({k: config[k] for k in ("encoders", "fusion", "head")}, seed=0)
    models = [copy.deepcopy(model, {id(model.encoders): model.encoders}) for _ in range(3)]
    rows = [[i * 3 + j for j in range(12)] for i in range(3)]
    datas = [FitData(spec, dsd["train"], dsd["validation"] if validation else None, train_indices=r)
             for r in rows]  # fmt: skip
    configs = [{"strategy": "head", "epochs": 3, "batch_size": 5, "lr": 0.01, "seed": 40 + i,
                "progress": False, "modality_dropout": 0.2, "warmup_ratio": 0.2} for i in range(3)]  # fmt: skip
    if batched:
        fits = fit_episodes(models, datas, configs)
        assert fits.mode == "batched", fits.mode
        results = fits.results
    else:
        results = [fit(m, d, c) for m, d, c in zip(models, datas, configs, strict=True)]
    weights = [
        {k: v for k, v in m.state_dict().items() if not k.startswith("encoders.")} for m in models
    ]
    return weights, results


@pytest.mark.parametrize("name", MAIN)
@pytest.mark.parametrize("validation", [False, True])
def test_fit_episodes_leaves_the_weights_each_fit_leaves(name: str, validation: bool) -> None:
    together, results = _fits(name, True, validation)
    alone, expected = _fits(name, False, validation)
    for a, b in zip(together, alone, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
    for got, want in zip(results, expected, strict=True):
        assert got.steps == want.steps and got.best_step == want.best_step
        if validation:
            assert got.best_metric == pytest.approx(want.best_metric, abs=1e-6)
            assert [h["step"] for h in got.history] == [h["step"] for h in want.history]


def test_a_fit_vmap_cannot_batch_falls_back_and_says_why() -> None:
    config = _frozen_config("moe", routing="expert_choice")
    report = _transfer(config, True)
    modes = {mode for stage, mode in report.episode_fits.items() if stage != "source"}
    assert len(modes) == 1 and next(iter(modes)).startswith(
        "sequential: MoEFusion does not run under vmap"
    )
    alone = _transfer(config, False)
    for target, result in report.targets.items():
        assert [e.adapted for e in result.episodes] == [
            e.adapted for e in alone.targets[target].episodes
        ]


def test_frozen_encoders_run_once_per_split_beside_a_tabular_network_fitted_per_episode(
    monkeypatch, caplog
) -> None:
    """The 48-minute case: frozen encoders beside a tabular_mlp whose statistics the scratch
    stage fits on each episode's rows. Each frozen encoder sees each split's rows once; the
    tabular network runs again for each episode's scratch model, and nothing warns."""
    import multimodal as mm
    from multimodal.engine.cache import FEATURES
    from multimodal.experiments.transfer import stages

    config = _frozen_config("concat")
    config["encoders"]["tabular"] = {
        "name": "tabular_mlp",
        **{k: v for k, v in tiny_run()["encoders"]["tabular"].items() if k != "name"},
    }
    config["data"]["columns"] = {
        "image": "image",
        "audio": "audio",
        "tabular": ["tab_0", "tab_1", "tab_2", "tab_3", "tab_channel"],
    }
    config["data"]["options"]["domains"] = 3
    config["transfer"].update(source=["d0"], target=["d1", "d2"], episodes=5)
    FEATURES.clear()
    seen: dict[str, int] = {"image": 0, "audio": 0, "tabular": 0}
    hooked: set[int] = set()
    build = stages.build_model

    def counting_build(*args, **kwargs):
        model = build(*args, **kwargs)
        for name, encoder in model.encoders.items():
            if id(encoder) not in hooked:  # pooled encoders are the same objects: hook once
                hooked.add(id(encoder))
                encoder.register_forward_hook(
                    lambda module, inputs, output, name=name: seen.__setitem__(name, seen[name] + output.tokens.shape[0])
                )  # fmt: skip
        return model

    monkeypatch.setattr(stages, "build_model", counting_build)
    with caplog.at_level(logging.WARNING, logger="multimodal.engine.cache"):
        report = _transfer(config, True)
    dsd = mm.load_dataset(mm.DatasetSpec.from_dict(config["data"]))
    size = {s: {d: sum(x == d for x in dsd[s]["domain"]) for d in ("d0", "d1", "d2")} for s in dsd}
    once = sum(size[s]["d0"] for s in ("train", "validation", "test"))
    once += sum(size[s][t] for s in ("train", "test") for t in ("d1", "d2"))
    assert seen["image"] == once and seen["audio"] == once
    # tabular: the source model's once, and each of 2 x 5 scratch models on its target's
    # train and test splits
    scratch = sum(5 * (size["train"][t] + size["test"][t]) for t in ("d1", "d2"))
    assert seen["tabular"] == once + scratch
    assert FEATURES.passes["image"] == FEATURES.passes["audio"] == 7  # the seven splits
    assert "again" not in caplog.text
    assert report.episode_fits["scratch d1"].startswith("sequential: the encoders differ")
    assert report.episode_fits["adapt d1"] == "batched"


def test_an_encoders_outputs_dropped_from_the_store_and_computed_again_warn_once(caplog) -> None:
    from multimodal.engine.cache import FEATURES

    config = _frozen_config("concat")
    FEATURES.clear()
    limit = FEATURES.max_bytes
    FEATURES.max_bytes = 1  # keeps nothing: every lookup computes again
    try:
        with caplog.at_level(logging.WARNING, logger="multimodal.engine.cache"):
            _transfer(config, True)
    finally:
        FEATURES.max_bytes = limit
        FEATURES.clear()
    warnings = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, however often it happens
    assert "audio, image" in warnings[0] and "FEATURES.max_bytes" in warnings[0]


def test_a_group_of_seeds_gives_each_seeds_report_as_run_alone() -> None:
    """``transfer_seeds`` (a benchmark's grid point) fits every seed's stages together; each
    seed's report is the one ``transfer_adaptations`` gives it alone. On the built-in data,
    whose spec loading resolves (the columns of a text encoder fitted on rows included)."""
    from multimodal.experiments.transfer import transfer_adaptations, transfer_seeds

    configs = []
    for seed in (0, 1):
        config = _frozen_config("concat")
        config["seed"] = seed
        configs.append(config)
    text = tiny_run(
        transfer={"k_shot": 2, "episodes": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}}
    )
    text["encoders"] = {"text": text["encoders"]["text"]}
    text["data"].pop("columns", None)  # resolved by loading, for every seed of the group
    texts = [{**copy.deepcopy(text), "seed": seed} for seed in (0, 1)]
    modes = []
    for group in (configs, texts):
        together = transfer_seeds(group, ["head"])
        modes.append(together[0]["head"].episode_fits)
        for config, reports in zip(group, together, strict=True):
            alone = transfer_adaptations(config, ["head"])["head"]
            got = reports["head"]
            assert got.seed == alone.seed and got.source == pytest.approx(alone.source, abs=1e-5)
            for target, result in got.targets.items():
                for a, b in zip(result.episodes, alone.targets[target].episodes, strict=True):
                    assert a.rows == b.rows
                    assert (a.adapted, a.scratch) == pytest.approx((b.adapted, b.scratch), abs=1e-5)
    # random-init encoders differ by seed, so the source fits run in turn (with pretrained
    # ones they run together: the main job's reference); the episodes' fits run together
    assert modes[0]["source"].startswith("sequential: the encoders differ")
    assert modes[0]["adapt d1"] == "batched"  # each seed's episodes together


def test_a_step_of_pooled_inputs_zeroes_the_tokens_modality_dropout_hides() -> None:
    """``pooled_inputs`` promises zeros where a mask is False: modality dropout, applied to
    the masks of a step's batch, must zero those rows' pooled tokens too."""
    from multimodal.engine.config import TrainConfig
    from multimodal.engine.stacked import _batch, _Inputs

    n, dims = 40, {"audio": 3, "image": 5}
    padded = {m: (torch.randn(n, 1, d), torch.ones(n, 1, dtype=torch.bool), torch.ones(n, dtype=torch.long))
              for m, d in dims.items()}  # fmt: skip
    padded["label"] = torch.arange(n)
    inputs = _Inputs.__new__(_Inputs)
    inputs.modalities, inputs.meta, inputs.length = list(dims), {}, n
    inputs.padded, inputs.pooled = padded, True
    configs = [TrainConfig(seed=s, modality_dropout=0.5) for s in (1, 2)]
    local = torch.stack([torch.randperm(n)[:20] for _ in configs])
    batch = _batch(inputs, local, local, configs, configs[0])
    for m in dims:
        hidden = ~batch["masks"][m][..., 0]
        assert hidden.any() and (~hidden).any()
        assert torch.equal(batch["tokens"][m][hidden], torch.zeros(int(hidden.sum()), 1, dims[m]))
        kept = batch["tokens"][m][~hidden]
        assert torch.equal(kept, padded[m][0][local][~hidden])
    assert torch.equal(batch["labels"], local)


def test_epoch_orders_are_each_samplers_shuffle() -> None:
    from multimodal.data.collate import EpochSampler

    orders = EpochSampler.orders(13, [0, 5, 77], 4)
    for seed, order in zip([0, 5, 77], orders, strict=True):
        sampler = EpochSampler(13, seed)
        sampler.set_epoch(4)
        assert order.tolist() == list(sampler)


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ({"domain_balanced": True}, "domain-balanced batches (train.domain_balanced)"),
        ({"dg": "vrex"}, "an objective beyond the task's loss"),
        ({"uda": "coral"}, "an objective beyond the task's loss"),
        ({"compile": True}, "train.compile"),
    ],
)
def test_a_setting_that_keeps_fits_apart_is_named(setting: dict, why: str) -> None:
    from multimodal.engine.config import TrainConfig
    from multimodal.engine.episodes import why_not_batched

    configs = [TrainConfig(seed=seed, **setting) for seed in (0, 1)]
    # Settings are read before the models and data: neither is looked at here.
    assert why_not_batched([None, None], [None, None], configs) == why
