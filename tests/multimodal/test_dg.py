"""Domain generalisation (``modeling.dg``, ``engine.domains``): each objective against its
definition on a hand-built batch, the domain-balanced sampler, and one source domain
giving today's fit."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import multimodal as mm
from multimodal import engine
from multimodal.engine.domains import DomainBalancedSampler
from multimodal.modeling.dg import coral_distance, create_dg_objective, list_dg_objectives
from multimodal.modeling.model import Encoded, ModelOutput
from tests.multimodal.tiny_run import tiny_data


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.task = mm.modeling.tasks.create_task("classification", num_classes=3)
        self.net = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Model(torch.nn.Module):
    """A head on two-dimensional fused features; 'a' and 'b' each set one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.head = _Head()
        self.fusion = torch.nn.Identity()

    def fuse(self, tokens: dict, masks: dict) -> tuple[torch.Tensor, None]:
        fused = torch.cat([tokens[m][:, 0] * masks[m][:, :1] for m in sorted(tokens)], dim=1)
        return self.head(fused), None


def _batch() -> tuple[_Model, ModelOutput, dict]:
    torch.manual_seed(0)
    model = _Model()
    tokens = {"a": torch.randn(8, 1, 1), "b": torch.randn(8, 1, 1)}
    masks = {m: torch.ones(8, 1, dtype=torch.bool) for m in tokens}
    logits, _ = model.fuse(tokens, masks)
    fused = torch.cat([tokens["a"][:, 0], tokens["b"][:, 0]], dim=1)
    out = ModelOutput(logits, None, None, fused, {}, Encoded(tokens, masks))
    batch = {"labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
             "domain": torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])}  # fmt: skip
    return model, out, batch


def _domain_losses(out: ModelOutput, batch: dict) -> torch.Tensor:
    return torch.stack(
        [F.cross_entropy(out.logits[batch["domain"] == d], batch["labels"][batch["domain"] == d])
         for d in range(3)]
    )  # fmt: skip


def test_erm_is_the_task_loss() -> None:
    model, out, batch = _batch()
    loss = create_dg_objective("erm", 3)(model, out, batch, 0.5)
    assert torch.equal(loss, F.cross_entropy(out.logits, batch["labels"]))


def test_groupdro_weights_grow_with_each_domains_loss_and_weight_the_loss() -> None:
    model, out, batch = _batch()
    dro = create_dg_objective("groupdro", 3, eta=0.5)
    losses = _domain_losses(out, batch).detach()
    q = torch.exp(0.5 * losses)
    q = q / q.sum()  # from uniform: q_d proportional to exp(eta L_d)
    loss = dro(model, out, batch, 0.0)
    assert torch.allclose(dro.q, q) and torch.allclose(loss, (q * losses).sum())
    dro(model, out, batch, 0.0)  # a second step multiplies again
    again = q * torch.exp(0.5 * losses)
    assert torch.allclose(dro.q, again / again.sum())
    assert int(dro.q.argmax()) == int(losses.argmax())


def test_irm_penalty_is_the_product_of_the_halves_gradients_at_scale_one() -> None:
    model, out, batch = _batch()
    irm = create_dg_objective("irm", 3, weight=100.0, anneal=0.5)
    logits, labels = out.logits.detach(), batch["labels"]

    def grad_at_one(rows: torch.Tensor) -> torch.Tensor:
        # d/dw CE(w * z, y) at w = 1 is the mean over rows of (softmax(z) - onehot(y)) . z
        z, y = logits[rows], labels[rows]
        return ((z.softmax(-1) - F.one_hot(y, 3)) * z).sum(-1).mean()

    penalties = []
    for d in range(3):
        rows = torch.nonzero(batch["domain"] == d).flatten()
        penalties.append(grad_at_one(rows[::2]) * grad_at_one(rows[1::2]))
    nll = _domain_losses(out, batch).mean()
    expected = torch.stack(penalties).mean()
    assert torch.allclose(irm(model, out, batch, 0.9), nll + 100.0 * expected, atol=1e-6)
    assert torch.allclose(irm(model, out, batch, 0.1), nll + expected, atol=1e-6)  # annealing


def test_vrex_adds_the_variance_of_the_domains_losses() -> None:
    model, out, batch = _batch()
    losses = _domain_losses(out, batch)
    vrex = create_dg_objective("vrex", 3, weight=10.0, anneal=0.0)
    expected = losses.mean() + 10.0 * losses.var(unbiased=False)
    assert torch.allclose(vrex(model, out, batch, 0.5), expected)


def test_coral_adds_the_mean_distance_over_pairs_of_domains() -> None:
    model, out, batch = _batch()
    d = batch["domain"]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = (
        _domain_losses(out, batch).mean()
        + 2.0
        * torch.stack(
            [coral_distance(out.fused[d == i], out.fused[d == j]) for i, j in pairs]
        ).mean()
    )
    assert torch.allclose(
        create_dg_objective("coral", 3, weight=2.0)(model, out, batch, 0.0), expected
    )
    same = torch.randn(5, 2)
    assert float(coral_distance(same, same)) == 0.0


def test_mixup_draws_from_its_own_seeded_generator() -> None:
    model, out, batch = _batch()
    a = create_dg_objective("mixup", 3, seed=4)(model, out, batch, 0.0)
    state = torch.random.get_rng_state()
    b = create_dg_objective("mixup", 3, seed=4)(model, out, batch, 0.0)
    assert torch.equal(a, b) and torch.equal(state, torch.random.get_rng_state())
    assert not torch.equal(a, create_dg_objective("mixup", 3, seed=5)(model, out, batch, 0.0))


def test_modality_vrex_penalises_a_contribution_that_changes_across_domains() -> None:
    model, out, batch = _batch()
    objective = create_dg_objective("modality_vrex", 3, weight=1.0, anneal=0.0)
    losses = _domain_losses(out, batch)
    penalty = 0.0
    for m in ("a", "b"):
        masks = {k: (torch.zeros_like(v) if k == m else v) for k, v in out.encoded.masks.items()}
        dropped = ModelOutput(model.fuse(out.encoded.tokens, masks)[0])
        penalty = penalty + (_domain_losses(dropped, batch) - losses).var(unbiased=False)
    assert torch.allclose(objective(model, out, batch, 0.0), losses.mean() + penalty)
    assert float(penalty.detach()) > 0  # the hand-built contributions do vary


def test_every_objective_is_registered_and_an_unknown_one_is_named() -> None:
    assert set(list_dg_objectives()) == {"erm", "groupdro", "irm", "vrex", "coral", "mixup",
                                         "modality_vrex"}  # fmt: skip
    with pytest.raises(Exception, match="groupdr"):
        create_dg_objective("groupdr", 2)


def test_the_balanced_sampler_gives_each_domain_its_share_of_every_batch() -> None:
    ids = torch.tensor([0] * 30 + [1] * 6 + [2] * 12)
    sampler = DomainBalancedSampler(ids, seed=3)
    order = list(sampler)
    assert len(order) == 48
    for start in range(0, 48, 6):
        assert ids[order[start : start + 6]].bincount(minlength=3).tolist() == [2, 2, 2]
    sampler.set_epoch(1)
    assert list(sampler) != order  # reshuffled per epoch, the same per (seed, epoch)
    sampler.set_epoch(0)
    assert list(sampler) == order
    one = DomainBalancedSampler(torch.zeros(10, dtype=torch.long), seed=3)
    plain = mm.data.collate.EpochSampler(10, 3, True)
    assert list(one) == list(plain)


@pytest.mark.parametrize("cached", [True, False])
def test_erm_on_balanced_batches_of_one_domain_is_todays_fit(cached: bool) -> None:
    config, spec, dsd, rows = tiny_data()
    train = dsd["train"].filter(lambda r: r["domain"] == dsd["train"][0]["domain"])
    model_config = {k: config[k] for k in ("encoders", "fusion", "head")}
    base = {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "seed": 0,
            "strategy": "head" if cached else "full"}  # fmt: skip
    weights = []
    for extra in ({}, {"dg": "erm", "domain_balanced": True}):
        model = mm.build_model(copy.deepcopy(model_config), rows, seed=0)
        result = engine.fit(model, engine.FitData(spec, train), mm.TrainConfig(**base, **extra))
        assert result.used_feature_cache == cached
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_groupdro_on_two_domains_trains_and_reads_each_rows_domain() -> None:
    config, spec, dsd, rows = tiny_data()
    model = mm.build_model({k: config[k] for k in ("encoders", "fusion", "head")}, rows, seed=0)
    seen = []
    original = engine.domains.create_dg_objective

    def spy(*args, **kwargs):
        objective = original(*args, **kwargs)
        objective.register_forward_pre_hook(lambda m, a: seen.append(a[2]["domain"].clone()))
        return objective

    engine.domains.create_dg_objective = spy
    try:
        cfg = mm.TrainConfig(epochs=1, batch_size=8, progress=False, strategy="head",
                             dg="groupdro", domain_balanced=True)  # fmt: skip
        engine.fit(model, engine.FitData(spec, dsd["train"]), cfg)
    finally:
        engine.domains.create_dg_objective = original
    assert seen and all(sorted(b.tolist()) == [0] * 4 + [1] * 4 for b in seen[:-1])


def _loo_config(**transfer) -> dict:
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run(
        train={"epochs": 2, "batch_size": 12, "lr": 0.01, "progress": False, "dg": "groupdro",
               "domain_balanced": True},
        transfer={"source": ["d0", "d1"], "target": ["d2"], "protocol": "leave_one_out",
                  "adaptation": "zero_shot", "episodes": 1, **transfer},
    )  # fmt: skip
    config["data"]["options"].update(domains=3, samples_per_domain=40)
    return config


def _poisoned(load):  # noqa: ANN001, ANN202
    """``load_dataset`` with the target domain's train and validation labels shifted by one
    class: what a leak of target rows into training or model selection would learn from."""

    def poisoned(spec):  # noqa: ANN001, ANN202
        dsd = load(spec)
        for split in ("train", "validation"):
            dsd[split] = dsd[split].map(
                lambda r: {"label": (r["label"] + 1) % 4 if r["domain"] == "d2" else r["label"]}
            )
        return dsd

    return poisoned


def _scores(config: dict) -> tuple[float, float, Any, float | None]:
    from multimodal.experiments.transfer import transfer

    report = transfer(config)
    result = report.targets["d2"]
    per_domain = report.source_fit["validation_per_domain"]  # each source's validation rows
    assert sorted(per_domain) == ["d0", "d1"] and all(0 <= v <= 1 for v in per_domain.values())
    return report.source, result.zero_shot, result.episodes[0], result.oracle


@pytest.mark.slow  # four transfers
def test_leave_one_out_reads_no_target_row_in_training_or_selection(monkeypatch) -> None:
    import multimodal.experiments.transfer.plan as plan_module

    clean = _scores(_loo_config())
    monkeypatch.setattr(plan_module, "load_dataset", _poisoned(plan_module.load_dataset))
    poisoned = _scores(_loo_config())
    assert clean[:2] == poisoned[:2]  # the source and held-out scores, to the last bit
    episode = poisoned[2]
    assert episode.adapt_samples == 0 and episode.adapted == poisoned[1]
    assert 0.0 <= clean[3] <= 1.0  # the oracle, reported apart (it reads target labels)
    assert math.isnan(episode.scratch)  # no scratch model on target rows
    # The poison does reach a protocol that trains on target rows.
    seen = dict(protocol="transfer", adaptation="head", k_shot=5)
    shown = _scores(_loo_config(**seen))[2].adapted
    monkeypatch.undo()
    assert shown != _scores(_loo_config(**seen))[2].adapted


def test_leave_one_out_refuses_an_arm_that_trains_on_the_target() -> None:
    from multimodal.experiments.transfer import transfer

    with pytest.raises(ValueError, match="only arm is zero_shot"):
        transfer(_loo_config(adaptation="head"))


def test_a_grid_axis_is_paired_against_its_reference_value_and_the_pairs_hold_each_domain_out(
    tmp_path,
) -> None:
    from multimodal.experiments.bench import summarize, summary_table
    from multimodal.experiments.bench.plan import Suite, plan, unit_config

    rows = []
    for objective, bonus in (("erm", 0.0), ("vrex", 0.02), ("irm", -0.01)):
        for seed in range(4):
            score = 0.5 + bonus + 0.01 * seed + (0.003 if objective == "vrex" and seed % 2 else 0)
            rows.append({"suite": "s", "source_domains": "a,b", "target": "c", "k_shot": 5,
                         "fusion": "concat", "adaptation": "zero_shot", "seed": seed, "metric": "accuracy",
                         "source": 0.9, "zero_shot": score, "adapted": score, "scratch": math.nan,
                         "transfer_gain": math.nan, "forgetting": 0.0, "train.dg": objective})  # fmt: skip
    summary = summarize(rows, versus={"train.dg": "erm"})
    by = {e["train.dg"]: e for e in summary}
    assert "adapted_vs_erm" not in by["erm"]
    assert by["vrex"]["adapted_vs_erm"]["mean"] == pytest.approx(0.0215)
    assert by["irm"]["adapted_vs_erm"]["mean"] == pytest.approx(-0.01)
    assert by["irm"]["adapted_vs_erm"]["tests"] == 2  # Holm over the two: scratch is NaN
    assert "adapted − erm" in summary_table(summary)

    suite = Suite(name="loo", fusions=["concat"], adaptations=["zero_shot"], seeds=1,
                  base={"data": {"path": "synthetic", "options": {"domains": 3, "samples_per_domain": 8}},
                        "transfer": {"protocol": "leave_one_out"}})  # fmt: skip
    units = plan(suite, ["concat"], 1)
    held = [unit_config(suite, u)["transfer"] for u in units]
    assert [(t["source"], t["target"]) for t in held] == [
        (["d1", "d2"], ["d0"]),
        (["d0", "d2"], ["d1"]),
        (["d0", "d1"], ["d2"]),
    ]


def test_the_weight_average_is_the_ema_of_each_step_and_what_the_fit_leaves() -> None:
    from multimodal.engine.averaging import WeightAverage

    layer = torch.nn.Linear(2, 1)
    average = WeightAverage(layer, decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    average.update()
    expected = 0.9 * start + 0.1 * layer.weight.detach()
    with average.swapped():
        assert torch.allclose(layer.weight, expected)
    assert torch.allclose(layer.weight, start + 1.0)  # the trained weights back after the block

    # The average does not steer training: the EMA fit ends with the EMA of the plain
    # fit's weights after each of its steps (no validation split: the final weights).
    config, spec, dsd, rows = tiny_data()
    model_config = {k: config[k] for k in ("encoders", "fusion", "head")}
    base = {"epochs": 2, "batch_size": 8, "progress": False, "strategy": "head"}
    plain = mm.build_model(copy.deepcopy(model_config), rows, seed=0)
    ema = {k: v.detach().clone() for k, v in plain.head.named_parameters()}

    def track(state) -> None:  # noqa: ANN001
        for name, param in plain.head.named_parameters():
            ema[name].lerp_(param.detach(), 0.5)

    engine.fit(plain, engine.FitData(spec, dsd["train"]), mm.TrainConfig(**base), on_step=[track])
    averaged = mm.build_model(copy.deepcopy(model_config), rows, seed=0)
    cfg = mm.TrainConfig(**base, weight_average="ema", ema_decay=0.5)
    engine.fit(averaged, engine.FitData(spec, dsd["train"]), cfg)
    for name, param in averaged.head.named_parameters():
        assert torch.allclose(param, ema[name], atol=1e-6), name
        assert not torch.allclose(param, plain.head.get_parameter(name), atol=1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(layer, decay=1.0)


def test_the_oracle_takes_the_test_score_at_the_best_target_validation_score() -> None:
    from multimodal.experiments.transfer.oracle import TargetOracle

    plan = type("Plan", (), {"targets": ["t"]})()
    oracle = TargetOracle(plan, None, "accuracy")
    oracle.seen["t"] = [(0.5, 0.40), (0.7, 0.45), (0.7, 0.60), (0.6, 0.90)]
    assert oracle.scores() == {"t": 0.45}  # the first of the best validation scores
    loss = TargetOracle(plan, None, "loss")
    loss.seen["t"] = [(0.5, 1.0), (0.3, 2.0)]
    assert loss.scores() == {"t": 2.0}  # a loss is best when lowest
