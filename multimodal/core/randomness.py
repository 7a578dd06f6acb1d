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
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .context import thread_setting

_M32 = 0xFFFFFFFF
_STATE = threading.local()


# A draw's kind: uniforms in steps of 2^-24 (one a hash) or of 2^-16 (two a hash, dropout's).
FINE, COARSE = "fine", "coarse"


@dataclass
class _Key:
    base: int | torch.Tensor  # hash of (seed, step): an int, or an int64 tensor under vmap
    draws: int = 0
    ahead: torch.Tensor | None = None  # the first draws' keys, hashed ahead (``draw_keys``)
    made: Sequence[torch.Tensor] = ()  # the first draws themselves, made ahead (``draws_ahead``)
    kinds: Sequence[tuple[str, int]] = ()  # (kind, size) of each draw in ``made``
    record: list[tuple[str, int]] | None = None  # where to note each draw's (kind, size)

    def stream(self, draw: int) -> int | torch.Tensor:
        """Draw ``draw``'s key: a hash of (base, the draw's index in the block)."""
        if self.ahead is not None and draw < self.ahead.shape[-1]:
            return self.ahead[draw]
        return _stream(self.base, draw)

    def uniforms(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """The next draw: uniforms of ``kind`` in ``x``'s shape, float32."""
        draw, size = self.draws, int(x.numel())
        self.draws += 1
        if draw < len(self.made) and self.kinds[draw] == (kind, size):
            return self.made[draw].reshape(x.shape)
        if self.record is not None:
            self.record.append((kind, size))
        return _uniforms(kind, self.stream(draw), size, x.device).reshape(x.shape)


def _block(seed: Any, step: int | torch.Tensor) -> Any:
    """The key of (seed, step)'s block: an int, or a tensor of keys for a tensor of seeds
    (or of steps)."""
    step = step if isinstance(step, torch.Tensor) else int(step)
    return _hash32(_hash32(seed & _M32) ^ (step & _M32))


def _stream(base: Any, draw: Any) -> Any:
    """The key of draw ``draw`` (an int, or a tensor of indices) in ``base``'s block."""
    return _hash32(base ^ ((draw * 0x85EBCA6B) & _M32))


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
    with _keyed(_Key(_block(seed, step))):
        yield


def draw_keys(seeds: torch.Tensor, step: int | Sequence[int], count: int = 16) -> torch.Tensor:
    """[E, 1 + count] int64: for each seed, the key of ``keyed_randomness(seed, step)``'s
    block and its first ``count`` draws' keys, hashed for every seed at once ([S, E, 1 +
    count] for a sequence of S steps). Under ``vmap`` each of those hashes is a dozen
    batched ops per draw; ``keyed_by`` reads them instead."""
    if not isinstance(step, Sequence):
        return draw_keys(seeds, [step], count)[0]
    steps = torch.tensor([int(s) for s in step], dtype=torch.int64, device=seeds.device)
    base = _block(seeds[None, :], steps[:, None])[..., None]  # S x E x 1
    draw = torch.arange(count, dtype=torch.int64, device=seeds.device)
    return torch.cat([base, _stream(base, draw)], -1)


# Draws made ahead: up to this many values (float32) at once, for a run of steps; hashed
# this many at a time (temporaries of about 512 KiB, in a core's cache through the hash's
# dozen passes).
_AHEAD = 1 << 22
_CHUNK = 1 << 17


def draws_ahead(keys: torch.Tensor, kinds: Sequence[tuple[str, int]]) -> list[torch.Tensor]:
    """The draws (``kinds``: each one's kind and size, as ``keyed_by(record=...)`` noted
    them) of every row's block of ``keys`` ([..., 1 + n], ``draw_keys``), [..., size] each:
    made outside ``vmap`` for all rows (every episode, and every step of a sequence) in one
    set of tensor ops per kind and cache-sized slab of rows, not per draw."""
    lead, ahead = keys.shape[:-1], keys.shape[-1] - 1
    flat = keys.reshape(-1, ahead + 1)
    # Each draw's stream as the int32 that ``_bits`` hashes in, once, not once per slab.
    streams = torch.stack(
        [flat[:, 1 + i] if i < ahead else _stream(flat[:, 0], i) for i in range(len(kinds))], 1
    ).to(torch.int32) if kinds else flat[:, :0]  # fmt: skip
    made: list[torch.Tensor | None] = [None] * len(kinds)
    for kind in (FINE, COARSE):
        chosen = [i for i, (k, _) in enumerate(kinds) if k == kind]
        if not chosen:
            continue
        counts = [_hashes(kind, kinds[i][1]) for i in chosen]
        index = torch.cat([torch.arange(c, dtype=torch.int32, device=keys.device) for c in counts])
        column = torch.repeat_interleave(torch.tensor(chosen, device=keys.device),
                                         torch.tensor(counts, device=keys.device))  # fmt: skip
        out = torch.empty(len(flat), _values(kind, len(index)), device=keys.device)
        rows = max(1, _CHUNK // max(len(index), 1))
        for start in range(0, len(flat), rows):
            stop = min(start + rows, len(flat))
            _to_uniforms(kind, _bits(index, streams[start:stop, column]), out[start:stop])
        offset = 0
        for i, c in zip(chosen, counts, strict=True):
            begin = offset * (2 if kind == COARSE else 1)
            made[i] = out[:, begin : begin + kinds[i][1]].reshape(*lead, kinds[i][1])
            offset += c
    return made  # type: ignore[return-value]


class StepDraws:
    """Each step's keys (``draw_keys``) and draws made ahead (``draws_ahead``) for a fit of
    several models, one seed each, of ``total`` steps: until the first step has noted the
    draws' kinds and sizes (``kinds``), its keys alone; then the draws of a run of steps at
    once, up to ``_AHEAD`` values."""

    def __init__(self, seeds: torch.Tensor, total: int = 0) -> None:
        self.seeds, self.total = seeds, total
        self.kinds: list[tuple[str, int]] | None = None
        self._ahead: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def __call__(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Step ``step``'s keys [E, 1 + n] and its draws, [E, size] each."""
        if self.kinds is None:
            return draw_keys(self.seeds, step), []
        if step not in self._ahead:
            values = len(self.seeds) * max(sum(size for _, size in self.kinds), 1)
            stop = min(step + max(_AHEAD // values, 1), max(self.total, step + 1))
            keys = draw_keys(self.seeds, range(step, stop))
            made = draws_ahead(keys, self.kinds)
            self._ahead = {
                s: (keys[i], [m[i] for m in made]) for i, s in enumerate(range(step, stop))
            }
        return self._ahead.pop(step)


@contextlib.contextmanager
def keyed_by(
    keys: torch.Tensor, made: Sequence[torch.Tensor] = (),
    kinds: Sequence[tuple[str, int]] = (), record: list[tuple[str, int]] | None = None,
) -> Iterator[None]:  # fmt: skip
    """``keyed_randomness`` of the (seed, step) that ``draw_keys`` hashed ``keys`` [1 + n]
    from: the same draws. ``made`` holds draws made ahead (``draws_ahead`` of ``kinds``),
    used where the draw at that index has that kind and size; ``record`` notes each draw
    made here."""
    with _keyed(_Key(keys[0], ahead=keys[1:], made=made, kinds=kinds, record=record)):
        yield


def _keyed(key: _Key) -> contextlib.AbstractContextManager[None]:
    return thread_setting(_STATE, "key", key)


def keyed() -> bool:
    """Whether draws are keyed here."""
    return getattr(_STATE, "key", None) is not None


def _uniforms(kind: str, stream: Any, size: int, device: torch.device) -> torch.Tensor:
    """[..., size] uniforms on [0, 1) from 32-bit hashes of each index on a Weyl sequence
    offset by ``stream`` (an int, or a tensor [...] or [..., 1]): ``FINE`` in steps of
    2^-24, one a hash; ``COARSE`` in steps of 2^-16, two a hash (what a dropout decision
    needs, its rate exact to 2^-16, at half the hashing)."""
    if isinstance(stream, torch.Tensor):
        stream = stream.to(device)
    index = torch.arange(_hashes(kind, size), dtype=torch.int32, device=device)
    return _to_uniforms(kind, _bits(index, stream))[..., :size]


def _bits(index: torch.Tensor, stream: Any) -> torch.Tensor:
    """``_hash32((index * 0x9E3779B1 + stream) mod 2^32)`` for an int32 ``index`` and an
    int or integer-tensor ``stream``, as int32: the same 32 bits, in int32 arithmetic, which wraps
    modulo 2^32 (half the bytes of int64 and no masks: about twice as fast)."""
    stream = stream.to(torch.int32) if isinstance(stream, torch.Tensor) else _signed(stream)
    x = index * _signed(0x9E3779B1) + stream
    x = x ^ ((x >> 16) & 0xFFFF)  # >> on int32 is arithmetic: the mask makes it logical
    x = x * 0x21F0AAAD
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x735A2D97
    return x ^ ((x >> 15) & 0x1FFFF)


def _signed(value: int) -> int:
    """``value`` mod 2^32 as an int32."""
    value &= _M32
    return value - (1 << 32) if value >> 31 else value


def _hashes(kind: str, size: int) -> int:
    """How many hashes ``size`` uniforms of ``kind`` take."""
    return size if kind == FINE else (size + 1) // 2


def _values(kind: str, hashes: int) -> int:
    """How many uniforms ``hashes`` hashes of ``kind`` give."""
    return hashes if kind == FINE else 2 * hashes


def _to_uniforms(kind: str, bits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """int32 hashes [..., n] (``_bits``) as uniforms: [..., n] (``FINE``) or [..., 2n]
    (``COARSE``), float32, in ``out`` if given. The scales are powers of two: exact."""
    if kind == FINE:
        values, scale = (bits >> 8) & 0xFFFFFF, 1.0 / (1 << 24)
    else:
        values, scale = _halves(bits), 1.0 / (1 << 16)
    if out is None:
        return values.to(torch.float32).mul_(scale)
    return out.copy_(values).mul_(scale)


def _halves(bits: torch.Tensor, little: bool = sys.byteorder == "little") -> torch.Tensor:
    """Each int32 of ``bits`` [..., n] as its two 16-bit halves, low first, [..., 2n]: on a
    little-endian machine the same memory read as uint16 (no copy; 8x faster than the
    interleaving copy, which other machines take)."""
    if little:
        return bits.contiguous().view(torch.uint16)
    return torch.stack([bits & 0xFFFF, (bits >> 16) & 0xFFFF], -1).flatten(-2)


def uniform_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform on [0, 1) in steps of 2^-24, in ``x``'s shape, float32, from the key."""
    return _STATE.key.uniforms(FINE, x)


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
    keep = _STATE.key.uniforms(COARSE, x) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is keyed inside ``keyed_randomness``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
