"""Keyed randomness: dropout masks and noise drawn as a pure function of a key.

Inside ``keyed_randomness(seed, step)`` the fusions' and heads' dropout (``Dropout``,
``dropout``) and the MoE router's noise (``normal_like``) take their random numbers from a
counter-based hash of (seed, step, the draw's index in the forward pass, the element's
index) instead of torch's global generator. A draw then depends on nothing else: not on
the draws before it in the process (a resumed fit draws what the uninterrupted one drew)
and not on other models trained beside it. ``seed`` may be a tensor: under
``torch.func.vmap`` each of several models stacked on a leading dimension (the episodes of
``engine.episodes``) draws with its own seed, exactly what it draws trained alone.

Outside the context, they are torch's own ``dropout`` and ``randn_like``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_M32 = 0xFFFFFFFF
_STATE = threading.local()


@dataclass
class _Key:
    base: int | torch.Tensor  # hash of (seed, step): an int, or an int64 tensor under vmap
    draws: int = 0

    def stream(self) -> int | torch.Tensor:
        """The next draw's key: a hash of (base, the draw's index in the block)."""
        draw = self.draws
        self.draws += 1
        return _hash32(self.base ^ ((draw * 0x85EBCA6B) & _M32))


def _hash32(x: Any) -> Any:
    """A 32-bit integer hash (lowbias32 constants, C. Wellons' hash prospector), on an int or
    an int64 tensor of values in [0, 2^32): each product stays below 2^63, so nothing
    overflows."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


@contextlib.contextmanager
def keyed_randomness(seed: int | torch.Tensor, step: int) -> Iterator[None]:
    """Draws inside are keyed by (``seed``, ``step``) and their order in the block. An int
    seed is hashed in Python; a tensor one (each model's, under vmap) in tensor ops."""
    if not isinstance(seed, torch.Tensor):
        seed = int(seed)
    base = _hash32(_hash32(seed & _M32) ^ (int(step) & _M32))
    previous = getattr(_STATE, "key", None)
    _STATE.key = _Key(base)
    try:
        yield
    finally:
        _STATE.key = previous


def keyed() -> bool:
    """Whether draws are keyed here."""
    return getattr(_STATE, "key", None) is not None


def _hashes(count: int, device: torch.device) -> torch.Tensor:
    """``count`` 32-bit hashes as int64: each index's on a Weyl sequence offset by the next
    draw's key."""
    stream = _STATE.key.stream()
    if isinstance(stream, torch.Tensor):
        stream = stream.to(device)
    index = torch.arange(count, dtype=torch.int64, device=device)
    return _hash32((index * 0x9E3779B1 + stream) & _M32)


def uniform_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform on [0, 1) in steps of 2^-24, in ``x``'s shape, float32, from the key."""
    return (_hashes(int(x.numel()), x.device) >> 8).to(torch.float32).reshape(x.shape) * (
        1.0 / (1 << 24)
    )


def _coarse_uniform_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform on [0, 1) in steps of 2^-16, two from each hash: what a dropout decision
    needs (its rate is exact to 2^-16), at half the hashing."""
    count = int(x.numel())
    bits = _hashes((count + 1) // 2, x.device)
    halves = torch.stack([bits & 0xFFFF, bits >> 16], -1).reshape(-1)[:count]
    return halves.to(torch.float32).reshape(x.shape) * (1.0 / (1 << 16))


def normal_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal in ``x``'s shape and dtype: keyed inside the context (Box-Muller on
    two keyed uniforms), ``torch.randn_like`` outside it."""
    if not keyed():
        return torch.randn_like(x)
    u1 = 1.0 - uniform_like(x)  # (0, 1]: log is finite
    u2 = uniform_like(x)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).to(x.dtype)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout``, with the mask keyed inside the context."""
    if not training or p == 0.0 or not keyed():
        return F.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    keep = _coarse_uniform_like(x) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is keyed inside ``keyed_randomness``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
