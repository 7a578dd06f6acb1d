"""Weights from a local file for a network built by name: read safely, keys aligned."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from multimodal.core.resources import resolve_resource

# Checkpoints often wrap the state dict in a training record under one of these keys.
_WRAPPERS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a torch file loaded with
    ``weights_only=True`` (tensors only: a file that needs arbitrary unpickling is refused)."""
    path = Path(resolve_resource(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message goes on to suggest weights_only=False: unsafe for a file of
        # unknown origin, so only its first sentence is kept.
        first = str(err).split(".", 1)[0].strip()
        raise ValueError(
            f"{path}: refused to unpickle it: it holds more than tensors ({first}); convert "
            "a copy you trust with safetensors.torch.save_file"
        ) from None
    for key in _WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return dict(state)


def align_state_dict(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str = ""
) -> dict[str, torch.Tensor]:
    """``state`` under the key names of ``reference`` (a model's own state dict).

    Names that already match are kept. A checkpoint of the same network from another
    implementation (other names, same tensors in the same order) is matched by position,
    and only when every shape agrees; anything else is an error naming the first mismatch.
    """
    if set(state) == set(reference):
        return dict(state)
    own = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    ref = [(k, v) for k, v in reference.items() if not k.endswith("num_batches_tracked")]
    if len(own) != len(ref):
        missing = sorted(set(reference) - set(state))[:3]
        raise ValueError(
            f"checkpoint {source}: {len(own)} tensors, the model has {len(ref)}; "
            f"names differ too (model keys absent from it: {missing})"
        )
    aligned = {}
    for (name, tensor), (ref_name, ref_tensor) in zip(own, ref, strict=True):
        if tuple(tensor.shape) != tuple(ref_tensor.shape):
            raise ValueError(
                f"checkpoint {source}: {name!r} has shape {tuple(tensor.shape)} where the "
                f"model's {ref_name!r} has {tuple(ref_tensor.shape)}; not the same network"
            )
        aligned[ref_name] = tensor
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    ref_counters = [k for k in reference if k.endswith("num_batches_tracked")]
    if len(counters) == len(ref_counters):  # BatchNorm step counters, by position too
        aligned.update({r: state[k] for k, r in zip(counters, ref_counters, strict=True)})
    return {k: aligned[k] for k in reference if k in aligned}
