"""``RunFolder``: the names of the files a run folder holds, in one place.

A run folder is what ``multimodal train`` (``fit`` with ``output_dir``) writes, and what
``transfer``, ``readapt``, ``evaluate`` and the server read back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class _Entry:
    """On the class, a file's name; on a ``RunFolder``, its path in that folder."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: Any, owner: type) -> Any:
        return self.name if folder is None else folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    """``RunFolder(path).results`` is ``path / "results.json"``; ``RunFolder.results`` is
    the bare name, for paths under another folder."""

    path: Path

    config = _Entry("config.json")  # the train config fit ran with
    environment = _Entry("environment.json")  # versions, threads, device, commit
    metrics = _Entry("metrics.jsonl")  # one JSON line per log step and evaluation
    checkpoints = _Entry("checkpoints")  # step_N folders
    trainer_state = _Entry("trainer_state.json")  # inside a checkpoint
    best_state = _Entry("best_state.safetensors")  # the best weights so far
    best_model = _Entry("best_model")  # save_pretrained of the best weights
    run_config = _Entry("run_config.json")  # the run config, its domains, class names
    results = _Entry("results.json")  # validation and test metrics, history
    lineage = _Entry("lineage.json")  # a readapted version's parent and data
    comparison = _Entry("comparison.json")  # old against new version
    comparison_md = _Entry("comparison.md")
    report = _Entry("report.json")  # a transfer run's report

    # What a fit writes, and with them what a training run (``multimodal train``) writes.
    FIT_ENTRIES = ("config", "environment", "metrics", "checkpoints", "best_state", "best_model")
    RUN_ENTRIES = (*FIT_ENTRIES, "run_config", "results")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def has_best_model(self) -> bool:
        """Whether a model is saved in ``best_model/`` (its ``config.json``, the saved
        model's, not the run's train config of the same name)."""
        return (self.best_model / "config.json").is_file()

    def saved_model(self) -> Path:
        """The saved-model folder: ``best_model/`` of a run folder, else the path itself."""
        return self.best_model if self.has_best_model else self.path

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}"

    def existing(self, entries: tuple[str, ...] = RUN_ENTRIES) -> list[Path]:
        """The ``entries`` (attribute names) that exist in this folder."""
        return [getattr(self, e) for e in entries if getattr(self, e).exists()]

    def claim(
        self, resuming: bool, overwrite: bool, entries: tuple[str, ...] = RUN_ENTRIES
    ) -> None:
        """Make the folder ready for a new run: one that holds a run (any of ``entries``) is
        refused unless the new run resumes it, or ``overwrite`` says to replace it, which
        deletes those entries only (never other files the folder holds)."""
        found = self.existing(entries)
        if not found or resuming:
            return
        if not overwrite:
            names = ", ".join(p.name for p in found)
            raise RunExistsError(
                f"{self.path} already holds a run ({names}); resume it with --resume-from latest "
                "(train.resume_from), write to another output_dir, or replace it with --overwrite "
                "(train.overwrite=true)"
            )
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (``.lock``, an advisory ``flock``) while a run writes to it: a
        second process that asks is refused at once, naming the one that holds it.
        Re-entrant within a process (``train`` holds it around its ``fit``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [_acquire(self.path / LOCK_NAME), 1]
        try:
            yield
        finally:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                _HELD.pop(key)[0].close()  # closing the file releases the lock


LOCK_NAME = ".lock"
_HELD: dict[Path, list[Any]] = {}  # folder -> [its open lock file, holders in this process]


def _acquire(path: Path) -> Any:
    handle = open(path, "a+")  # noqa: SIM115  (held until released)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unlocked
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(
            f"{path.parent} is being written by another run ({holder}); wait for it to finish or "
            "use another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


class RunLockedError(RuntimeError):
    """A run folder another process is writing to."""


class RunExistsError(FileExistsError):
    """A run folder that already holds a run, written to without resuming or overwriting."""
