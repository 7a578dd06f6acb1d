"""The encoder contract, checked for every registered encoder."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import encoders
from tests.conftest import (
    TINY_AUDIO,
    TINY_ENCODERS,
    TINY_VIT,
    assert_all_parameters_have_grad,
    raw_values,
)


def test_every_registered_encoder_has_a_tiny_config() -> None:
    assert sorted(TINY_ENCODERS) == encoders.list_encoders()


@pytest.mark.parametrize("name", encoders.list_encoders())
@pytest.mark.parametrize("batch_size", [1, 3])
def test_encoder_contract(name: str, batch_size: int) -> None:
    enc = encoders.create_encoder(name, **TINY_ENCODERS[name])
    values = raw_values(enc.modality, batch_size)
    enc.fit(values)
    inputs = enc.processor(values)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == batch_size for v in inputs.values())
    # BatchNorm cannot train on one value per channel: B=1 runs in eval mode.
    enc.train(batch_size > 1)
    out = enc(inputs)
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == batch_size
    assert out.tokens.shape[2] == enc.out_dim
    assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]
    assert out.mask.any(dim=1).all(), "every present sample has at least one valid token"
    assert torch.isfinite(out.tokens).all()
    if batch_size > 1:
        (out.tokens * out.mask[..., None]).square().mean().backward()
        assert_all_parameters_have_grad(enc)


@pytest.mark.parametrize("name", encoders.list_encoders())
def test_encoder_accepts_absent_values(name: str) -> None:
    enc = encoders.create_encoder(name, **TINY_ENCODERS[name])
    values = raw_values(enc.modality, 2)
    enc.fit(values).eval()
    assert enc.is_missing(None)
    out = enc(enc.processor([values[0], None, values[1]]))
    assert out.tokens.shape[0] == 3 and torch.isfinite(out.tokens).all()
    out = enc(enc.processor([values[0], None]))
    # A present sample's tokens do not depend on an absent neighbour.
    alone = enc(enc.processor([values[0]]))
    n = int(alone.mask[0].sum())
    assert torch.allclose(out.tokens[0, :n], alone.tokens[0, :n], atol=1e-5)


AUDIO_TIMM_VARIANTS = {  # squeeze-excitation pools the whole map; TF "same" padding; a ViT
    "efficientnet_b0": {"model_name": "efficientnet_b0", "normalize": "clip"},
    "tf_efficientnet_lite0": {"model_name": "tf_efficientnet_lite0", "normalize": "clip"},
    "vit": {"model_name": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT},
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(n, TINY_ENCODERS[n]) for n in encoders.list_encoders()]
    + [("audio_timm", {**TINY_AUDIO, **v}) for v in AUDIO_TIMM_VARIANTS.values()],
    ids=[*encoders.list_encoders(), *(f"audio_timm-{k}" for k in AUDIO_TIMM_VARIANTS)],
)
def test_each_rows_eval_output_is_the_same_alone_and_in_a_batch(name: str, kwargs: dict) -> None:
    """A row's valid tokens never depend on the other rows of its batch: not on how far
    they pad it (audio clips of other lengths, texts of other lengths), nor on their values."""
    enc = encoders.create_encoder(name, **kwargs)
    values = raw_values(enc.modality, 5)
    enc.fit(values).eval()
    with torch.no_grad():
        batch = enc(enc.processor(values))
        for i, value in enumerate(values):
            alone = enc(enc.processor([value]))
            n = int(alone.mask[0].sum())
            assert int(batch.mask[i].sum()) == n and bool(batch.mask[i, :n].all()), i
            torch.testing.assert_close(batch.tokens[i, :n], alone.tokens[0, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", encoders.list_encoders())
def test_encoder_state_survives_rebuild_from_to_config(name: str, tmp_path) -> None:
    enc = encoders.create_encoder(name, **TINY_ENCODERS[name])
    values = raw_values(enc.modality, 3)
    enc.fit(values).eval()
    kwargs = enc.to_config(tmp_path)
    for key in getattr(type(enc), "path_kwargs", ()):
        kwargs[key] = str(tmp_path / kwargs[key])
    rebuilt = encoders.create_encoder(name, **kwargs).eval()
    rebuilt.load_state_dict(enc.state_dict())
    a, b = enc(enc.processor(values)), rebuilt(rebuilt.processor(values))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


def _seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("name", encoders.list_encoders())
@pytest.mark.parametrize("strength", ["weak", "strong"])
def test_every_encoder_augments_its_inputs_repeatably(name: str, strength: str) -> None:
    enc = encoders.create_encoder(name, **TINY_ENCODERS[name])
    values = raw_values(enc.modality, 4)
    enc.fit(values).eval()
    inputs = enc.processor(values)
    _seeded(0)
    first = enc.augment(inputs, strength)
    _seeded(0)
    again = enc.augment(inputs, strength)
    _seeded(1)
    other = enc.augment(inputs, strength)
    for key, value in inputs.items():
        assert first[key].shape == value.shape and first[key].dtype == value.dtype, key
        assert torch.equal(first[key].nan_to_num(), again[key].nan_to_num()), key
    changed = [k for k in inputs if not torch.equal(first[k].nan_to_num(), value_of(inputs, k))]
    assert changed, f"{name} {strength}: nothing augmented"
    assert any(not torch.equal(first[k].nan_to_num(), other[k].nan_to_num()) for k in changed)
    out = enc(first)
    assert torch.isfinite(out.tokens).all()


def value_of(inputs: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return inputs[key].nan_to_num()
