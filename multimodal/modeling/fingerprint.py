"""Fingerprints of weights: a hash of an encoder's class, parameters and buffers, each
tensor hashed once per copy."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

# Each tensor's digest by id, dropped when the tensor dies and recomputed after an in-place
# change (its version counter moves) or a new storage: a frozen encoder is hashed once per copy.
_DIGESTS: dict[int, tuple[int, int, bytes]] = {}


def tensor_digest(tensor: torch.Tensor) -> bytes:
    stamp = (tensor._version, tensor.data_ptr())
    known = _DIGESTS.get(id(tensor))
    if known is not None and known[:2] == stamp:
        return known[2]
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).digest()
    if known is None:
        weakref.finalize(tensor, _DIGESTS.pop, id(tensor), None)
    _DIGESTS[id(tensor)] = (*stamp, digest)
    return digest


# Encoders whose holders promise never to change them (``modeling.pool``): their
# fingerprint, kept so that no lookup walks a large pretrained network's modules again.
_PINNED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def pin(encoder: Any) -> str:
    """Compute and keep ``encoder``'s fingerprint: its holder will not change it."""
    _PINNED[encoder] = fingerprint = _compute(encoder)
    return fingerprint


def encoder_fingerprint(encoder: Any) -> str:
    """A hash of an encoder's class, parameters and buffers (BatchNorm statistics too): two
    encoders with this hash compute the same outputs in eval mode."""
    pinned = _PINNED.get(encoder)
    return pinned if pinned is not None else _compute(encoder)


def _compute(encoder: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
    named = [*encoder.named_parameters(), *encoder.named_buffers()]
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor_digest(tensor))
    return digest.hexdigest()
