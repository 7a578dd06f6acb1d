"""Scratch baselines reused across commands: ``multimodal transfer`` with another arm, or
``mm.transfer`` again, trains no scratch model whose inputs are the same as before.

A scratch fit depends on the model config, the data (spec, and the files of local data),
the scratch stage's train config, the target, the episode's seed and rows, the package
versions and the toolkit's code (``code_fingerprint``: another checkout of the same version
trains again); not on the adaptation arm. Its score is stored under a hash of these, as
the feature store keys encoder outputs, in ``TRANSFERFUSE_CACHE`` (default
``~/.cache/transferfuse``) ``/scratch/<key>.json``. A stream's episode (no row indices) is
never reused. Benchmarks do not reuse it: each unit records its own scratch fits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from . import stored

# Train keys that change where or how loudly a fit runs, not what it learns.
_NOT_LEARNED = ("output_dir", "progress", "log_every", "trackers", "tracker_project",
                "tracker_kwargs", "save_every", "keep_checkpoints", "overwrite", "resume_from")  # fmt: skip


def learned(cfg: Any) -> dict[str, Any]:
    """A stage's train config without the keys that change where or how loudly it runs."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_LEARNED}


def cache_root() -> Path:
    return stored.root() / "scratch"


def data_fingerprints(spec: Any) -> list[str]:
    """``data.loading.local_fingerprint`` of each local path the data spec reads (hub
    datasets are pinned by the spec's revision instead)."""
    from ...data.loading import local_fingerprint

    paths = [
        spec.path,
        *(w.get("path") if isinstance(w, dict) else w for w in (spec.domains or {}).values()),
    ]
    return [local_fingerprint(Path(p)) for p in paths if p and Path(str(p)).exists()]


def plan_inputs(plan: Any, files: list[str]) -> dict[str, Any]:
    """What every stage key of ``plan`` shares (``files``: ``data_fingerprints``, read once
    for a group of plans that load the same data)."""
    import torch

    from ... import __version__
    from ...core.provenance import code_fingerprint

    return {"model": plan.run.model.to_dict(), "data": plan.run.raw.get("data"), "files": files,
            "seed": plan.seed, "metric": plan.metric,
            "versions": [__version__, torch.__version__, code_fingerprint()]}  # fmt: skip


def scratch_key(
    inputs: dict[str, Any], target: str, episode: Any, cfg: Any, stage: str = "scratch"
) -> str | None:
    """The hash of everything a stage's fit on an episode and its score depend on (None: a
    stream): the plan's ``inputs`` (``plan_inputs``) and the episode's own. ``stage``:
    ``scratch``, or ``adapt ARM`` (an arm's score, kept to compare arms across commands,
    never reused in place of training)."""
    if episode.rows is None:
        return None
    own = {"train": learned(cfg), "target": target, "stage": stage,
           "episode": [episode.index, episode.seed, list(episode.rows)]}  # fmt: skip
    return hashlib.sha256(
        json.dumps({**inputs, **own}, sort_keys=True, default=str).encode()
    ).hexdigest()


def load(key: str | None) -> float | None:
    if key is None:
        return None
    path = cache_root() / f"{key}.json"
    try:
        score = float(json.loads(path.read_text())["score"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or a damaged entry: train again
    stored.mark_used(path)
    return score


def store(key: str | None, score: float, info: dict[str, Any]) -> None:
    from ...core.io import write_json_atomic

    if key is not None:
        write_json_atomic(cache_root() / f"{key}.json", {"score": score, **info})


def same_as_head(plans: list[Any], arm: Any, target: str, scores: list[list[float]]) -> bool | None:
    """Store ``arm``'s adapted scores (plan by plan, episode by episode) and say whether
    they equal, to four decimals, what the head arm scored on the same episodes in an
    earlier command (None: head's are not stored, or this is head)."""
    from ..adaptations import create_adaptation

    head = create_adaptation("head")
    files = data_fingerprints(plans[0].spec)
    matches = []
    for plan, plan_scores in zip(plans, scores, strict=True):
        inputs = plan_inputs(plan, files)
        for episode, score in zip(plan.episodes[target], plan_scores, strict=True):
            own = plan.stage(arm.overrides(plan.run.transfer), None, episode.seed)
            store(scratch_key(inputs, target, episode, own, f"adapt {arm.name}"), score,
                  {"target": target, "episode": episode.index, "arm": arm.name})  # fmt: skip
            if arm.name == "head":
                continue
            theirs = plan.stage(head.overrides(plan.run.transfer), None, episode.seed)
            found = load(scratch_key(inputs, target, episode, theirs, "adapt head"))
            matches.append(None if found is None else round(found, 4) == round(score, 4))
    if not matches or None in matches:
        return None
    return all(matches)
