"""``RunFolder``: the names of the files a run folder holds, in one place.

A run folder is what ``multimodal train`` (``fit`` with ``output_dir``) writes, and what
``transfer``, ``readapt``, ``evaluate`` and the server read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class RunFolder:
    """``RunFolder(path).results`` is ``path / "results.json"``; the class attributes are
    the bare names, for code that builds paths under another folder."""

    path: Path

    CONFIG: ClassVar[str] = "config.json"  # the train config fit ran with
    ENVIRONMENT: ClassVar[str] = "environment.json"  # versions, threads, device, commit
    METRICS: ClassVar[str] = "metrics.jsonl"  # one JSON line per log step and evaluation
    CHECKPOINTS: ClassVar[str] = "checkpoints"  # step_N folders
    TRAINER_STATE: ClassVar[str] = "trainer_state.json"  # inside a checkpoint
    BEST_STATE: ClassVar[str] = "best_state.safetensors"  # the best weights so far
    BEST_MODEL: ClassVar[str] = "best_model"  # save_pretrained of the best weights
    RUN_CONFIG: ClassVar[str] = "run_config.json"  # the run config, domains, class names
    RESULTS: ClassVar[str] = "results.json"  # validation and test metrics, history
    LINEAGE: ClassVar[str] = "lineage.json"  # a readapted version's parent and data
    COMPARISON: ClassVar[str] = "comparison.json"  # old against new version
    COMPARISON_MD: ClassVar[str] = "comparison.md"
    REPORT: ClassVar[str] = "report.json"  # a transfer run's report

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def environment(self) -> Path:
        return self.path / self.ENVIRONMENT

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def best_state(self) -> Path:
        return self.path / self.BEST_STATE

    @property
    def best_model(self) -> Path:
        return self.path / self.BEST_MODEL

    @property
    def run_config(self) -> Path:
        return self.path / self.RUN_CONFIG

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def lineage(self) -> Path:
        return self.path / self.LINEAGE

    @property
    def comparison(self) -> Path:
        return self.path / self.COMPARISON

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}"
