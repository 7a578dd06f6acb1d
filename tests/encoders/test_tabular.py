from __future__ import annotations

import math

import pytest
import torch

import encoders


def make(**kwargs):
    return encoders.create_encoder(
        "tabular_mlp",
        numerical=["a", "b"],
        categorical={"c": ["x", "y"], "d": 3},
        dim=8,
        hidden_dim=16,
        **kwargs,
    )


def test_statistics_are_fitted_and_kept_in_the_state_dict() -> None:
    enc = make().fit(
        [{"a": 1.0, "b": 10.0, "c": "x", "d": 0}, {"a": 3.0, "b": math.nan, "c": "y", "d": 1}]
    )
    assert enc.mean.tolist() == [2.0, 10.0]
    assert enc.std[0].item() == pytest.approx(1.0)
    other = make()
    other.load_state_dict(enc.state_dict())
    assert torch.equal(other.mean, enc.mean)


def test_nan_inf_and_none_use_the_missing_token_unknown_categories_index_zero() -> None:
    enc = make().eval()
    rows = [
        {"a": math.nan, "b": 1.0, "c": "x", "d": 2},
        {"a": math.inf, "b": 1.0, "c": "x", "d": 2},
        {"a": None, "b": 1.0, "c": "unseen", "d": None},
        [5.0, 1.0, "y", 1],
    ]
    inputs = enc.processor(rows)
    assert torch.isnan(inputs["numerical"][:3, 0]).all()
    assert inputs["categorical"].tolist() == [[1, 3], [1, 3], [0, 0], [2, 2]]
    out = enc(inputs)
    assert out.tokens.shape == (4, 1, 8) and torch.isfinite(out.tokens).all()
    assert torch.equal(out.tokens[0], out.tokens[1])


def test_feature_tokens_mode() -> None:
    enc = make(tokens="features")
    out = enc(enc.processor([{"a": 1.0, "b": 2.0, "c": "x", "d": 0}]))
    assert out.tokens.shape == (1, 4, 8)


def test_bad_values_name_sample_and_column() -> None:
    enc = make()
    with pytest.raises(TypeError, match="sample 1, column 'a'"):
        enc.processor(
            [{"a": 1.0, "b": 2.0, "c": "x", "d": 0}, {"a": "high", "b": 2.0, "c": "x", "d": 0}]
        )
    with pytest.raises(ValueError, match="sample 0: missing columns \\['d'\\]"):
        enc.processor([{"a": 1.0, "b": 2.0, "c": "x"}])
    with pytest.raises(ValueError, match="column 'd': expected a code in \\[0, 3\\)"):
        enc.processor([{"a": 1.0, "b": 2.0, "c": "x", "d": 7}])
