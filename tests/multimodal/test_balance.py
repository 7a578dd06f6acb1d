"""Modality balancing: each method changes the gradient the way its paper says, and is
training-identical to none at strength 0."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.engine.checkpoint import checkpoints, load_modules
from multimodal.experiments.config import model_config
from multimodal.modeling.balance import (
    FUSED,
    OGMGE,
    GradBlend,
    UnimodalAux,
    blend_weights,
    create_balancer,
    ogm_coefficients,
)
from tests.multimodal.tiny_run import tiny_data

ONE_PROCESS = SimpleNamespace(num_processes=1)


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return tiny_data()


def _model_and_batch(tiny: tuple, n: int = 16) -> tuple:
    config, spec, dsd, rows = tiny
    model = mm.build_model(model_config(config), rows, seed=0)
    return model, model.preprocess(rows[:n])


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def test_ogm_coefficient_slows_only_the_leading_modality() -> None:
    k = ogm_coefficients({"audio": 3.0, "image": 1.0}, alpha=0.5)
    assert k["audio"] == pytest.approx(1 - math.tanh(0.5 * (3.0 - 1.0)))
    assert k["image"] == 1.0
    # three modalities: each against the mean of the other two
    k3 = ogm_coefficients({"a": 4.0, "b": 2.0, "c": 2.0}, alpha=1.0)
    assert k3 == pytest.approx({"a": 1 - math.tanh(1.0), "b": 1.0, "c": 1.0})
    assert ogm_coefficients({"a": 4.0, "b": 2.0}, alpha=0.0) == {"a": 1.0, "b": 1.0}


def test_ogm_ge_scales_the_dominant_encoder_gradient_by_its_batch_coefficient(tiny) -> None:
    model, batch = _model_and_batch(tiny)
    balancer = OGMGE(model, strength=0.8, seed=0, ge=False)
    out = model(batch)
    balancer.observe(model, out, batch)
    out.loss.backward()
    before = {m: _grads(model.encoders[m]) for m in model.modalities}
    fusion_before = _grads(model.fusion)
    # The scores by hand: the true class's probability with one modality present, eval mode.
    model.eval()
    with torch.no_grad():
        alone = model.unimodal_logits(model.encode(batch))
    model.train()
    scores = {
        m: float(alone[m].softmax(-1).gather(1, batch["labels"][:, None]).sum()) for m in alone
    }
    expected = ogm_coefficients(scores, 0.8)
    logged = balancer.modulate(model, ONE_PROCESS)
    assert logged == pytest.approx({f"balance_coef_{m}": k for m, k in expected.items()})
    dominant = max(scores, key=scores.get)
    assert expected[dominant] < 1.0
    for m in model.modalities:
        for name, g in _grads(model.encoders[m]).items():
            torch.testing.assert_close(g, before[m][name] * expected[m], rtol=1e-6, atol=0)
    for name, g in _grads(model.fusion).items():  # the fusion's gradient is not modulated
        assert torch.equal(g, fusion_before[name])
    assert not balancer.scores.any()  # the window's scores start over


def test_ogm_ge_noise_has_the_gradient_scale_and_is_the_same_on_every_process(tiny) -> None:
    def modulated() -> tuple[dict, dict, dict]:
        model, batch = _model_and_batch(tiny)
        balancer = OGMGE(model, strength=5.0, seed=3, ge=True)
        out = model(batch)
        balancer.observe(model, out, batch)
        out.loss.backward()
        before = {m: _grads(model.encoders[m]) for m in model.modalities}
        coef = balancer.modulate(model, ONE_PROCESS)
        return before, {m: _grads(model.encoders[m]) for m in model.modalities}, coef

    before, after, coef = modulated()
    _, again, _ = modulated()
    slowed = [m for m in before if coef[f"balance_coef_{m}"] < 1.0]
    assert slowed
    for m in slowed:
        k = coef[f"balance_coef_{m}"]
        name = max(before[m], key=lambda n: before[m][n].numel())
        noise = after[m][name] - k * before[m][name]
        assert noise.std().item() == pytest.approx(before[m][name].std().item(), rel=0.3)
        assert torch.equal(after[m][name], again[m][name])  # seeded by the update count
    for m in set(before) - set(slowed):  # a modality that does not lead keeps its gradient
        assert all(torch.equal(after[m][n], before[m][n]) for n in before[m])


def test_unimodal_aux_adds_each_modality_head_loss_to_the_encoders_only(tiny) -> None:
    model, batch = _model_and_batch(tiny)
    balancer = UnimodalAux(model, strength=0.5, seed=0)
    out = model(batch)
    term = balancer.loss(out, batch)
    losses = balancer.unimodal.losses(model.head.task, out.encoded, batch["labels"])
    assert term.item() == pytest.approx(0.5 * sum(v.item() for v in losses.values()))
    (out.loss + term).backward()
    with_aux = {"fusion": _grads(model.fusion), "text": _grads(model.encoders["text"])}
    model.zero_grad()
    model(batch).loss.backward()
    assert all(
        torch.equal(g, model.fusion.get_parameter(n).grad) for n, g in with_aux["fusion"].items()
    )
    moved = [
        n
        for n, g in with_aux["text"].items()
        if not torch.equal(g, model.encoders["text"].get_parameter(n).grad)
    ]
    assert moved  # the text encoder also learns from its own head


def test_blend_weights_from_a_hand_made_validation_history() -> None:
    previous = {FUSED: (1.0, 1.2), "audio": (1.1, 1.3), "image": (1.0, 1.5)}
    current = {FUSED: (0.8, 1.1), "audio": (0.9, 1.25), "image": (0.5, 1.6)}
    # fused: dG = 0.1, dO = 0.3 - 0.2 = 0.1 -> 10; audio: dG = 0.05, dO = 0.35 - 0.2 -> 2.2;
    # image: its validation loss rose (dG < 0) -> 0
    raw = {FUSED: 0.1 / 0.1**2, "audio": 0.05 / 0.15**2, "image": 0.0}
    weights = blend_weights(previous, current)
    assert weights == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    worse = {k: (t, v + 1.0) for k, (t, v) in previous.items()}
    assert blend_weights(previous, worse) is None  # nothing generalised better: keep weights


def test_grad_blend_loss_is_the_weighted_sum_of_head_losses(tiny) -> None:
    model, batch = _model_and_batch(tiny)
    balancer = GradBlend(model, strength=1.0, seed=0)
    balancer.weights.copy_(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    out = model(batch)
    total = out.loss + balancer.loss(out, batch)
    losses = balancer.unimodal.losses(model.head.task, out.encoded, batch["labels"])
    fused = model.head.loss(out.logits, batch["labels"])
    expected = 0.5 * fused + 0.3 * losses["tabular"] + 0.2 * losses["text"]
    assert balancer.keys == [FUSED, "tabular", "text"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    half = GradBlend(model, strength=0.5, seed=0)
    half.weights.copy_(balancer.weights)
    assert half.effective() == pytest.approx({FUSED: 0.75, "tabular": 0.15, "text": 0.1})


def _fit(tiny: tuple, **train: object) -> tuple[torch.nn.Module, engine.FitResult]:
    config, spec, dsd, rows = tiny
    model = mm.build_model(model_config(config), rows, seed=0)
    result = engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]),
                        {**config["train"], "epochs": 2, **train})  # fmt: skip
    return model, result


@pytest.mark.parametrize("method", ["ogm_ge", "grad_blend", "unimodal_aux"])
def test_strength_zero_trains_bit_identically_to_none(tiny, method: str) -> None:
    reference, _ = _fit(tiny)
    model, result = _fit(tiny, balance=method, balance_strength=0.0)
    assert reference.state_dict().keys() == model.state_dict().keys()
    for (name, a), b in zip(
        reference.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    balanced, _ = _fit(tiny, balance=method, balance_strength=1.0)
    pairs = zip(reference.state_dict().values(), balanced.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_grad_blend_reestimates_its_weights_and_checkpoints_them(tiny, tmp_path) -> None:
    _, result = _fit(tiny, balance="grad_blend", epochs=3, output_dir=str(tmp_path), save_every=5)
    weights = [
        {k: v for k, v in h.items() if k.startswith("balance_weight_")} for h in result.history
    ]
    assert weights[0] == pytest.approx(
        dict.fromkeys(weights[0], 1 / 3)
    )  # uniform until two evaluations
    assert weights[-1] != weights[0] and sum(weights[-1].values()) == pytest.approx(1.0)
    saved = checkpoints(tmp_path)[-1]
    restored = GradBlend(_model_and_batch(tiny)[0], 1.0, 0)
    load_modules(saved, {"balance": restored})
    assert [float(w) for w in restored.weights] == pytest.approx(list(weights[-1].values()))


def test_methods_say_what_they_cannot_do(tiny) -> None:
    model, _ = _model_and_batch(tiny)
    with pytest.raises(ValueError, match="one of"):
        create_balancer("pcgrad", model)
    with pytest.raises(ValueError, match="validation split"):
        create_balancer("grad_blend", model, has_validation=False)
    with pytest.raises(ValueError, match=">= 0"):
        create_balancer("unimodal_aux", model, strength=-1.0)
    with pytest.raises(ValueError, match="no balance_kwargs"):
        create_balancer("unimodal_aux", model, ge=True)
    for p in model.encoders.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="every encoder is frozen"):
        create_balancer("ogm_ge", model)
    config, spec, dsd, rows = tiny
    one = {**config, "encoders": {"text": config["encoders"]["text"]}}
    with pytest.raises(ValueError, match="only \\['text'\\]"):
        create_balancer("unimodal_aux", mm.build_model(model_config(one), rows, seed=0))


@pytest.mark.parametrize("method", ["ogm_ge", "grad_blend", "unimodal_aux"])
def test_every_fusion_takes_every_method(tiny, method: str) -> None:
    """One step's hooks on every registered fusion: the per-modality scores and heads read
    the encoder outputs, so no fusion needs its own support."""
    from fusion import list_fusions

    config, spec, dsd, rows = tiny
    for name in list_fusions():
        model = mm.build_model(
            model_config({**config, "fusion": {"name": name, "dim": 16}}), rows[:16], seed=0
        )
        batch = model.preprocess(rows[:8])
        balancer = create_balancer(method, model, strength=1.0)
        out = model(batch)
        balancer.observe(model, out, batch)
        term = balancer.loss(out, batch)
        total = out.loss if term is None else out.loss + term
        total.backward()
        logged = balancer.modulate(model, ONE_PROCESS)
        assert torch.isfinite(total), name
        assert all(math.isfinite(v) for v in logged.values()), name
