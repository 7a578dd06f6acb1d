"""Checkpoints: accelerate's ``save_state`` plus the train state, written atomically and
verified by checksums before a resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.config import ConfigError
from ..core.io import CorruptCheckpointError, verify_checkpoint, write_checksums
from ..core.run_folder import RunFolder
from .state import STATE_NAME, TrainState

logger = logging.getLogger(__name__)
TRAIN_CONFIG_NAME = "train_config.json"  # in a checkpoint: the config its run trained with


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a complete one holds trainer_state.json)."""
    folder = RunFolder(run_dir).checkpoints
    found = (
        [p for p in folder.glob("step_*") if (p / STATE_NAME).is_file()] if folder.is_dir() else []
    )
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState, keep: int,
                    modules: Mapping[str, nn.Module] | None = None,
                    files: Sequence[Path] = (), config: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """accelerate's save_state into a temporary folder, then the state JSON (and the state
    dicts of ``modules`` that accelerate does not hold, as ``NAME.safetensors``, copies of
    the run's ``files`` that exist, and the train ``config`` a resume is checked against),
    then one rename."""
    final = RunFolder(run_dir).checkpoint(state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state.save(tmp)
            for name, module in (modules or {}).items():
                tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(tensors, str(tmp / f"{name}.safetensors"))
            for file in files:
                if file.is_file():
                    shutil.copyfile(file, tmp / file.name)
            if config is not None:
                (tmp / TRAIN_CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
            # Written last: a checkpoint is complete exactly when its checksums file exists.
            write_checksums(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        # A full disk or a crash mid-save: drop the partial folder, keep the older checkpoints.
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def load_modules(path: Path, modules: Mapping[str, nn.Module]) -> None:
    """Restore the state dicts ``save_checkpoint`` wrote for ``modules``."""
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(
                f"{path} has no {file.name}: it was saved by a run without {name}"
            )
        device = next(iter(module.state_dict().values())).device
        module.load_state_dict(load_file(str(file), device=str(device)))


def check_random_states(path: Path, process_index: int) -> None:
    """Raise ``CorruptCheckpointError`` unless this process's random states in ``path`` load
    as plain data. accelerate would log the refusal at INFO and resume without them, and
    the run would no longer match an unbroken one."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as safe_load

    file = path / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not file.is_file():
        raise CorruptCheckpointError(f"checkpoint {path} has no {file.name} (its random states)")
    try:
        states = safe_load(file)
    except Exception as err:  # what an unpickler refuses varies: UnpicklingError, EOF, ...
        raise CorruptCheckpointError(
            f"checkpoint {path}: {file.name} is not plain tensors and numbers, so it was not "
            f"unpickled ({type(err).__name__}); resume from another checkpoint or start over"
        ) from None
    if not isinstance(states, dict) or "torch_manual_seed" not in states:
        raise CorruptCheckpointError(f"checkpoint {path}: {file.name} holds no random states")


def check_resume_config(path: Path, run_dir: Path | None, cfg: Any) -> None:
    """Refuse a resume whose train config differs from the checkpoint's (its own copy, else
    the run folder's ``config.json``) in a key that makes it another run: only the keys of
    ``RESUMABLE`` (how long it runs, how it logs and saves) may change."""
    from .config import RESUMABLE

    saved_file = path / TRAIN_CONFIG_NAME
    if not saved_file.is_file() and run_dir is not None:
        saved_file = RunFolder(run_dir).config
    if not saved_file.is_file():
        logger.warning("%s records no train config: the resume is not checked against it", path)
        return
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    changed = sorted(k for k in now if k in saved and k not in RESUMABLE and saved[k] != now[k])
    if changed:
        what = "; ".join(f"train.{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"resuming {path} with another train config ({what}); a resume continues the same "
            f"run, where only {', '.join(sorted(RESUMABLE))} may change. Start a new run "
            "(another output_dir, or --overwrite) to change them"
        )


def resolve_resume(resume_from: str, run_dir: Path | None) -> Path | None:
    """The checkpoint to resume from: the given folder (verified), or with ``latest`` the
    newest one whose checksums match, skipping corrupt ones with a warning."""
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_NAME})")
        verify_checkpoint(path)
        return path
    if run_dir is None:
        raise ValueError("resume_from='latest' needs output_dir")
    for path in reversed(checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            logger.warning("%s; falling back to an older checkpoint", err)
            continue
        return path
    return None


def last_checkpoint(run_dir: Path | None) -> Path | None:
    found = checkpoints(run_dir) if run_dir is not None else []
    return found[-1] if found else None
