"""``RunFolder``: the names of the files a run folder holds, in one place.

A run folder is what ``multimodal train`` (``fit`` with ``output_dir``) writes, and what
``transfer``, ``readapt``, ``evaluate`` and the server read back.
"""

from __future__ import annotations

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
