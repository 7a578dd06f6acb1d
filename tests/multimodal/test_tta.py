"""Test-time adaptation: tent changes only normalisation affine parameters, bn_adapt only
running statistics, and both run as adaptation arms for every fusion."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fusion
import multimodal as mm
from multimodal import engine
from multimodal.experiments.adaptations import AdaptContext, create_adaptation
from multimodal.experiments.config import RunConfig, model_config, train_config
from multimodal.modeling.tta import NORMS, bn_adapt, tent
from tests.multimodal.test_adversarial import IMAGE
from tests.multimodal.tiny_run import tiny_data, tiny_run

ENCODERS = {"tabular": tiny_run()["encoders"]["tabular"], "image": IMAGE}
SMALL = {"cross_attention": {"num_heads": 2}, "moe": {"num_experts": 2}, "bottleneck": {"num_heads": 2},
         "transformer": {"num_heads": 2}}  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    return tiny_data(encoders=ENCODERS)


def _model(setup, name: str = "concat"):
    config, _, _, rows = setup
    cfg = model_config(config)
    cfg["fusion"] = {"name": name, "dim": 16, **SMALL.get(name, {})}
    return mm.build_model(cfg, rows, seed=0)


def _batches(setup, model, n: int = 3):
    _, spec, dsd, _ = setup
    rows = dsd["validation"].remove_columns(["label"])
    loader = mm.make_loader(rows, model, spec, "tta", batch_size=8)
    return [b for _, b in zip(range(n), loader, strict=False)]


def _norm_affine(model) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORMS):
            names |= {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return names


def test_tent_changes_only_normalisation_affine_parameters(setup) -> None:
    model = _model(setup)
    before = {k: v.clone() for k, v in model.named_parameters()}
    parts = tent(model, _batches(setup, model), lambda m, b: m(b), lr=1e-2)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= _norm_affine(model), changed - _norm_affine(model)
    assert any(k.startswith("encoders.image") for k in changed)
    assert parts["encoders.image"] > 0 and parts["encoders.tabular"] == 0  # the MLP has none
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.running_mean is None and not m.track_running_stats for m in bns)


def test_bn_adapt_changes_only_running_statistics(setup) -> None:
    model = _model(setup)
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.named_buffers() if "running_" in k}
    parts = bn_adapt(model, _batches(setup, model), lambda m, b: m(b))
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    moved = [k for k, v in model.named_buffers() if k in stats and not torch.equal(v, stats[k])]
    assert moved and all(k.startswith("encoders.image") for k in moved)
    assert parts["encoders.image"] > 0 and not model.training


def test_bn_adapt_statistics_are_the_average_over_the_target_batches(setup) -> None:
    """With momentum None the running mean is the plain average of the batch means: the
    same whichever order the batches come in."""
    a, b = _model(setup), _model(setup)
    batches = _batches(setup, a, 4)
    bn_adapt(a, batches, lambda m, x: m(x))
    bn_adapt(b, list(reversed(batches)), lambda m, x: m(x))
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        if "running_mean" in name:
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_every_fusion_adapts_with_each_test_time_arm(setup, name) -> None:
    config, spec, dsd, _ = setup
    run = RunConfig.from_dict(config)
    context = AdaptContext(engine.FitData(spec, dsd["train"]), dsd["validation"], None)
    for arm in ("tent", "bn_adapt"):
        adaptation = create_adaptation(arm)
        keys = adaptation.overrides(run.transfer)
        data, used = adaptation.data(context)
        assert used == len(dsd["validation"]) and not adaptation.episodic
        model = _model(setup, name)
        adaptation.train(model, data, train_config(config, **{**keys, "batch_size": 8}))
        metrics = engine.evaluate(model, dsd["test"], spec)
        assert math.isfinite(metrics["loss"]), (name, arm)


def test_transfer_runs_the_test_time_arms(setup) -> None:
    config, _, _, _ = setup
    config = dataclasses.replace(RunConfig.from_dict(config)).raw
    config["transfer"] = {**config["transfer"], "source": ["d0"], "target": ["d1"]}
    config["train"] = {**config["train"], "epochs": 1}
    from multimodal.experiments.transfer import transfer_adaptations

    reports = transfer_adaptations(config, ["head", "tent", "bn_adapt"])
    for arm in ("tent", "bn_adapt"):
        result = reports[arm].targets["d1"]
        assert math.isfinite(result.adapted) and math.isfinite(result.forgetting)
