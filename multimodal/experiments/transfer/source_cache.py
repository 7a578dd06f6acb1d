"""Trained source models kept across commands: ``multimodal rank`` scores the source models
that an earlier command trained (``multimodal bench``, ``transfer`` or ``rank``) instead of
training them again. Train once, then rank candidates for each new target.

A source fit depends on the model config, the data (spec, and the files of local data), the
source domains, the source stage's train config, the seed, the encoders' weights
(``encoder_fingerprint``), the source files of the fusion and head classes, the package
versions and the toolkit's code (``core.provenance.code_fingerprint``). Its model is stored under a hash of these, as the scratch scores are
(``scratch_cache``), in ``TRANSFERFUSE_CACHE`` (default ``~/.cache/transferfuse``)
``/source/<key>.safetensors``: the fusion's and head's tensors (the encoders, frozen under
the ``head`` strategy, come back from their own weights and rows), beside ``<key>.json``
with the fit's summary and the file's sha256. Both are written atomically, the JSON last;
an entry whose file does not match its sha256 is trained again. Stored only for fits that
leave the encoders as built (``train.strategy: head``; a fine-tuned encoder would be
hundreds of MB per seed), on rows (not a stream), without privacy accounting, under the
standard protocol (leave-one-out's target oracle watches the fit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ...engine.stacked import fusion_and_head
from ...modeling.fingerprint import encoder_fingerprint
from . import scratch_cache, stored


def cache_root() -> Path:
    return stored.root() / "source"


def storable(plan: Any, cfg: Any) -> bool:
    """Whether a source fit can be stored and read back (see the module's docstring)."""
    from ...data.split import Split

    return (
        cfg.strategy == "head"
        and not cfg.private
        and plan.run.transfer.protocol == "transfer"
        and not Split(plan.source["train"]).streamed
    )


def source_key(plan: Any, model: Any, cfg: Any, files: list[str]) -> str:
    """The hash of everything ``plan``'s source fit depends on (``model``: as built, before
    training; ``files``: ``scratch_cache.data_fingerprints``)."""
    inputs = scratch_cache.plan_inputs(plan, files)
    inputs.pop("metric")  # set by the source fit itself
    encoders = {name: encoder_fingerprint(enc) for name, enc in model.encoders.items()}
    blob = json.dumps({**inputs, "sources": list(plan.sources), "train": scratch_cache.learned(cfg), "encoders": encoders,
                       "code": _code(model), "stage": "source"}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def _code(model: Any) -> str:
    """A hash of the source files that define the model's fusion and head: a fusion edited
    in place (a user's own, registered without a new package version) is trained again."""
    import inspect

    digest = hashlib.sha256()
    for part in (model.fusion, model.head):
        try:
            digest.update(Path(inspect.getfile(type(part))).read_bytes())
        except (OSError, TypeError):  # defined where no file can be read: its name only
            digest.update(f"{type(part).__module__}.{type(part).__qualname__}".encode())
    return digest.hexdigest()


def _trained_state(model: Any) -> dict[str, torch.Tensor]:
    """The fusion's and head's tensors (copies: safetensors refuses shared storage); the
    encoders' modules are not walked."""
    return {k: v.detach().clone().contiguous() for k, v in fusion_and_head(model).items()}


def store(key: str, model: Any, fit: dict[str, Any]) -> None:
    """Keep ``model`` (trained) and its fit's summary under ``key``."""
    from safetensors.torch import save

    from ...core.io import write_bytes_atomic, write_json_atomic

    data = save(_trained_state(model))
    root = cache_root()
    write_bytes_atomic(root / f"{key}.safetensors", data)
    write_json_atomic(
        root / f"{key}.json", {"fit": fit, "sha256": hashlib.sha256(data).hexdigest()}
    )


def load(key: str, model: Any) -> dict[str, Any] | None:
    """Load the model stored under ``key`` into ``model`` (built as for the fit) and return
    its fit's summary; None (``model`` untouched) when absent, damaged or not this model's."""
    from safetensors.torch import load as load_bytes

    root = cache_root()
    try:
        entry = json.loads((root / f"{key}.json").read_text())
        data = (root / f"{key}.safetensors").read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"] or "metric" not in entry["fit"]:
            return None
        state = load_bytes(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: train again
    expected = fusion_and_head(model)  # names and shapes only: no copies
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        return None
    for name in ("fusion", "head"):
        getattr(model, name).load_state_dict({k[len(name) + 1 :]: v for k, v in state.items()
                                              if k.startswith(f"{name}.")})  # fmt: skip
    stored.mark_used(root / f"{key}.json")
    return dict(entry["fit"])
