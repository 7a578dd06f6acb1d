"""Fine-tuning that forgets less: L2-SP, EWC and LwF as loss terms and adaptation arms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fusion
import multimodal as mm
from multimodal import engine
from multimodal.experiments.adaptations import AdaptContext, create_adaptation
from multimodal.experiments.config import RunConfig, model_config, train_config
from multimodal.experiments.transfer import transfer_adaptations
from multimodal.modeling.regularize import L2SP, LwF, fisher_diagonal
from tests.multimodal.tiny_run import tiny_data, tiny_run

TABULAR = {"tabular": tiny_run()["encoders"]["tabular"]}


@pytest.fixture(scope="module")
def setup():
    return tiny_data(encoders=TABULAR)


def _model(setup, fusion_name: str = "concat", **fusion_kwargs):
    config, _, _, rows = setup
    model_cfg = model_config(config)
    model_cfg["fusion"] = {"name": fusion_name, "dim": 16, **fusion_kwargs}
    return mm.build_model(model_cfg, rows, seed=0)


def test_l2sp_is_half_the_weighted_squared_distance_to_the_start(setup) -> None:
    model = _model(setup)
    model.encoders.requires_grad_(False)  # the head strategy: fusion and head train
    term = L2SP(model, weight=0.3)
    expected = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                step = torch.full_like(p, 0.01) * (1 + len(name) % 3)
                p.add_(step)
                expected += float((step.double() ** 2).sum())
            else:
                p.add_(1.0)  # frozen: moved, but not in the penalty
    got = term(model, None, None)
    assert math.isclose(got.item(), 0.5 * 0.3 * expected, rel_tol=1e-5)


class _Out:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_ewc_fisher_is_the_expected_squared_score_under_the_model() -> None:
    """Checked against torch.func's per-sample gradients (vmap over jacrev): the mean over
    rows of sum_c p(c|x) (d log p(c|x) / d theta)^2, whatever the rows' labels."""
    from torch.func import functional_call, jacrev, vmap

    torch.manual_seed(0)
    model = _Linear()
    x = torch.randn(7, 3)
    fisher = fisher_diagonal(model, [x[i : i + 1] for i in range(7)], lambda m, b: _Out(m(b)))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def log_probs(p, xi):
        return functional_call(model, p, (xi[None],))[0].log_softmax(-1)

    jac = vmap(jacrev(log_probs), in_dims=(None, 0))(params, x)  # name -> [rows, classes, *shape]
    probs = model(x).softmax(-1).detach()
    for name, j in jac.items():
        weights = probs.reshape(*probs.shape, *([1] * (j.dim() - 2)))
        torch.testing.assert_close(fisher[name], (weights * j.pow(2)).sum(1).mean(0))
    assert fisher["net.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("method", ["l2sp", "lwf"])
def test_at_strength_zero_training_is_bit_identical_to_head(setup, method) -> None:
    """The term is computed (a teacher forward for lwf) and weighted by 0: the same
    weights, to the bit, as the head strategy alone."""
    config, spec, dsd, _ = setup
    data = engine.FitData(spec, dsd["train"], dsd["validation"])
    plain, regularized = _model(setup), _model(setup)
    engine.fit(plain, data, train_config(config, strategy="head", epochs=2))
    result = engine.fit(regularized, data, train_config(config, strategy="head", epochs=2, regularize=method,
                                                        regularize_weight=0.0))  # fmt: skip
    assert result.steps > 0
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), regularized.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_lwf_is_zero_at_the_start_and_grows_as_the_model_moves(setup) -> None:
    config, spec, dsd, _ = setup
    model = _model(setup)
    batch = mm.data.MultimodalCollator(model, spec, "train")(
        [mm.data.RowView(dsd["train"], spec, "train")[i] for i in range(8)]
    )
    term = LwF(model, weight=1.0, forward=lambda m, b: m(b))
    model.eval()  # no dropout: the student is then the teacher
    assert term(model, model(batch), batch).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.head.net[-1].bias.add_(torch.tensor([2.0, -2.0, 0.0, 0.0]))
    assert term(model, model(batch), batch).item() > 0.01


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_every_fusion_takes_a_step_of_every_forgetting_arm(setup, name) -> None:
    """Each arm's overrides and data, one optimizer step, a finite loss and its term."""
    config, spec, dsd, _ = setup
    small = {"cross_attention": {"num_heads": 2}, "moe": {"num_experts": 2}, "bottleneck": {"num_heads": 2},
             "transformer": {"num_heads": 2}}.get(name, {})  # fmt: skip
    run = RunConfig.from_dict(config)
    source = engine.FitData(spec, dsd["train"])
    context = AdaptContext(source, dsd["validation"], list(range(8)))
    for arm in ("l2sp", "ewc", "lwf"):
        adaptation = create_adaptation(arm)
        keys = adaptation.overrides(run.transfer)
        assert keys["regularize"] == arm and keys["strategy"] == "head"
        data, used = adaptation.data(context)
        assert used == 8 and (data.reference is not None) == (arm == "ewc")
        model = _model(setup, name, **small)
        cfg = train_config(
            config,
            **{
                **keys,
                "max_steps": 1,
                "log_every": 1,
                "regularize_kwargs": {"reference_rows": 8} if arm == "ewc" else {},
            },
        )
        result = engine.fit(model, data, cfg)
        assert result.steps == 1 and all(
            math.isfinite(h["eval_loss"]) for h in result.history if "eval_loss" in h
        )


def test_transfer_reports_forgetting_for_each_arm(setup) -> None:
    """The three arms and head through the protocol, on the same episodes: each trains and
    reports a finite forgetting."""
    config, _, _, _ = setup
    config = {**config, "transfer": {**config["transfer"], "adapt": {"epochs": 5, "lr": 0.05},
                                     "source": ["d0"], "target": ["d1"]}}  # fmt: skip
    config["train"] = {**config["train"], "epochs": 2}
    reports = transfer_adaptations(config, ["head", "l2sp", "ewc", "lwf"])
    forgetting = {arm: r.targets["d1"].forgetting for arm, r in reports.items()}
    assert all(v is not None and math.isfinite(v) for v in forgetting.values()), forgetting
