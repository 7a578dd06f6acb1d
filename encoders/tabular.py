"""Tabular encoder: standardised numerical features, categorical embeddings, learned NaN tokens."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._augment import augment_tabular
from ._base import AttackSurface, Encoder, EncoderOutput, Processor
from ._registry import register_encoder, register_processor

logger = logging.getLogger(__name__)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@register_processor("tabular")
class TabularProcessor(Processor):
    """Rows (a mapping column -> value, or a sequence ordered numerical then categorical) ->
    ``numerical`` [B, n_num] float (NaN where missing) and ``categorical`` [B, n_cat] codes
    (0 for missing or unseen categories). Standardisation lives in the encoder's weights.
    """

    modality = "tabular"

    def __init__(
        self,
        numerical: Sequence[str] = (),
        categorical: Mapping[str, Sequence[Any] | int] | None = None,
    ) -> None:
        self.numerical = list(numerical)
        # Categories as a vocabulary (values mapped by position) or a cardinality (int codes).
        self.categorical = {
            k: (list(v) if not isinstance(v, int) else int(v))
            for k, v in (categorical or {}).items()
        }
        self.vocab = {
            k: {c: i + 1 for i, c in enumerate(v)}
            for k, v in self.categorical.items()
            if isinstance(v, list)
        }

    @property
    def columns(self) -> list[str]:
        return [*self.numerical, *self.categorical]

    def row(self, value: Any, index: int) -> list[Any]:
        if isinstance(value, Mapping):
            absent = [c for c in self.columns if c not in value]
            if absent:
                raise ValueError(
                    f"tabular sample {index}: missing columns {absent}; it has {sorted(value)}"
                )
            return [value[c] for c in self.columns]
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            row = list(value.tolist() if hasattr(value, "tolist") else value)
            if len(row) != len(self.columns):
                raise ValueError(
                    f"tabular sample {index}: expected {len(self.columns)} values {self.columns}, got {len(row)}"
                )
            return row
        raise TypeError(
            f"tabular sample {index}: expected a mapping or a sequence, got {type(value).__name__}"
        )

    def numbers(self, values: Sequence[Any]) -> torch.Tensor:
        """[B, n_num] float64 with NaN for missing (None, NaN, inf) values."""
        out = torch.full((len(values), len(self.numerical)), float("nan"), dtype=torch.float64)
        for i, value in enumerate(values):
            if value is None:
                continue
            row = self.row(value, i)
            for j, column in enumerate(self.numerical):
                x = row[j]
                if x is None:
                    continue
                if (
                    isinstance(x, bool)
                    or not isinstance(x, (int, float))
                    and not hasattr(x, "__float__")
                ):
                    raise TypeError(
                        f"tabular sample {i}, column {column!r}: expected a number, got {x!r}"
                    )
                try:
                    x = float(x)
                except (OverflowError, ValueError, TypeError) as err:
                    raise ValueError(
                        f"tabular sample {i}, column {column!r}: cannot read {x!r} as a number ({err})"
                    ) from err
                if math.isfinite(x) and abs(x) > _FLOAT32_MAX:
                    raise ValueError(
                        f"tabular sample {i}, column {column!r}: {x!r} is outside the float32 range"
                    )
                if math.isinf(x):
                    self._note_infinite(column, i, x)
                out[i, j] = x if math.isfinite(x) else float("nan")
        return out

    def _note_infinite(self, column: str, index: int, x: float) -> None:
        """An infinite value is taken as missing, and said so once per column."""
        noted = self.__dict__.setdefault("_noted_infinite", set())
        if column not in noted:
            noted.add(column)
            logger.warning(
                "tabular sample %d, column %r: %r is taken as a missing value (and so is any "
                "later infinite value in this column)", index, column, x,
            )  # fmt: skip

    def codes(self, values: Sequence[Any]) -> torch.Tensor:
        """[B, n_cat] long, 0 for missing or unseen categories."""
        out = torch.zeros(len(values), len(self.categorical), dtype=torch.long)
        n_num = len(self.numerical)
        for i, value in enumerate(values):
            if value is None:
                continue
            row = self.row(value, i)
            for j, (column, spec) in enumerate(self.categorical.items()):
                x = row[n_num + j]
                if x is None or (isinstance(x, float) and math.isnan(x)):
                    continue
                if isinstance(spec, list):
                    try:
                        out[i, j] = self.vocab[column].get(x, 0)
                    except TypeError as err:  # unhashable: a list or dict in the cell
                        raise TypeError(
                            f"tabular sample {i}, column {column!r}: expected a category, got {x!r}"
                        ) from err
                else:
                    try:
                        code = int(x)
                    except (TypeError, ValueError, OverflowError) as err:
                        raise ValueError(
                            f"tabular sample {i}, column {column!r}: expected a code in [0, {spec}), got {x!r}"
                        ) from err
                    if not 0 <= code < spec:
                        raise ValueError(
                            f"tabular sample {i}, column {column!r}: expected a code in [0, {spec}), got {x!r}"
                        )
                    out[i, j] = code + 1
        return out

    def __call__(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {"numerical": self.numbers(values).float(), "categorical": self.codes(values)}

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {"numerical": self.numerical, "categorical": self.categorical}


@register_encoder("tabular_mlp")
class TabularMLPEncoder(Encoder):
    """Feature tokens in the FT-Transformer style, pooled by an MLP or returned per feature.

    Numerical feature j becomes ``x_j * w_j + b_j`` after standardisation with statistics
    fitted by ``fit`` and kept in the state dict; a NaN/inf/None value becomes a learned
    missing-value token of that feature. Categorical features get an embedding each; index 0
    is kept for missing or unseen categories.

    A raw value is a mapping column -> value, or a sequence ordered numerical then categorical.
    tokens: [B, 1, dim] (``tokens="pooled"``) or [B, n_features, dim] (``tokens="features"``).
    """

    modality = "tabular"

    def __init__(
        self,
        numerical: Sequence[str] = (),
        categorical: Mapping[str, Sequence[Any] | int] | None = None,
        dim: int = 64,
        hidden_dim: int = 128,
        tokens: str = "pooled",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if tokens not in ("pooled", "features"):
            raise ValueError(f"tokens must be 'pooled' or 'features', got {tokens!r}")
        self.processor = TabularProcessor(numerical, categorical)
        # the processor normalises the column lists; the encoder sizes its weights from them
        self.numerical, self.categorical = self.processor.numerical, self.processor.categorical
        if not self.numerical and not self.categorical:
            raise ValueError(
                "tabular_mlp needs at least one numerical or categorical column: name them under "
                "encoders.tabular.numerical / .categorical, or list them under data.columns.tabular "
                "(the encoder then reads those)"
            )
        self.token_mode = tokens
        self.dim = dim
        self.hidden_dim = hidden_dim
        n_num, n_cat = len(self.numerical), len(self.categorical)
        self.register_buffer("mean", torch.zeros(n_num))
        self.register_buffer("std", torch.ones(n_num))
        self.num_weight = nn.Parameter(torch.randn(n_num, dim) / math.sqrt(dim))
        self.num_bias = nn.Parameter(torch.zeros(n_num, dim))
        self.missing = nn.Parameter(torch.randn(n_num, dim) * 0.02)
        sizes = [len(v) + 1 if isinstance(v, list) else v + 1 for v in self.categorical.values()]
        self.register_buffer(
            "cat_offsets", torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
        )
        self.cat_embedding = nn.Embedding(max(sum(sizes), 1), dim)
        n_features = n_num + n_cat
        self.pool = (
            nn.Sequential(
                nn.Flatten(1),
                nn.Linear(n_features * dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, dim),
            )
            if tokens == "pooled"
            else None
        )
        self.dropout = dropout
        self.out_dim = dim

    @property
    def columns(self) -> list[str]:
        return self.processor.columns

    def fits_on_data(self) -> bool:
        return bool(self.numerical) or super().fits_on_data()

    def fit(self, values: Sequence[Any]) -> TabularMLPEncoder:
        """Fit the standardisation statistics on training rows (missing values ignored)."""
        if not self.numerical:
            return self
        x = self.processor.numbers([v for v in values if v is not None])
        finite = ~torch.isnan(x)
        count = finite.sum(0).clamp(min=1)
        mean = torch.where(finite, x, 0).sum(0) / count
        var = torch.where(finite, (x - mean) ** 2, 0).sum(0) / count
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp(min=1e-6).float())
        return self

    def attack_surface(self, inputs: dict[str, torch.Tensor]) -> AttackSurface | None:
        """Numerical values, in units of each column's training standard deviation; missing
        values and categories are left alone."""
        numerical = inputs["numerical"]
        if numerical.shape[-1] == 0:
            return None
        return AttackSurface("numerical", numerical, self.std, ~torch.isnan(numerical))

    def augment(self, inputs: dict[str, torch.Tensor], strength: str) -> dict[str, torch.Tensor]:
        """Noise scaled by the fitted std (weak); also feature dropout (strong):
        ``encoders._augment``."""
        return augment_tabular(inputs, self.std, strength)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        numerical, categorical = inputs["numerical"], inputs["categorical"]
        missing = torch.isnan(numerical)  # B x n_num
        # Outliers beyond 10^4 standard deviations are clipped so tokens stay finite.
        x = torch.where(missing, 0.0, (numerical - self.mean) / self.std).clamp(-1e4, 1e4)
        num_tokens = x[..., None] * self.num_weight + self.num_bias  # B x n_num x D
        num_tokens = torch.where(missing[..., None], self.missing.expand_as(num_tokens), num_tokens)
        cat_tokens = self.cat_embedding(categorical + self.cat_offsets)  # B x n_cat x D
        tokens = torch.cat([num_tokens, cat_tokens], dim=1)  # B x F x D
        if self.pool is not None:
            tokens = self.pool(tokens)[:, None]  # B x 1 x D
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {
            "numerical": self.numerical,
            "categorical": self.categorical,
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "tokens": self.token_mode,
            "dropout": self.dropout,
        }
