"""The record of a run: ``config.json``, ``environment.json``, ``metrics.jsonl`` and trackers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..core.config import config_hash
from ..core.provenance import environment, importlib_available
from ..core.run_folder import RunFolder
from .config import TrainConfig
from .state import TrainState
from .trackers import Trackers

METRICS_NAME = RunFolder.metrics


def trackers_for(cfg: TrainConfig) -> list[str]:
    """The trackers a run logs to: ``train.trackers``, or by default TensorBoard when the
    run has a folder, ``train.tensorboard`` is on and it is installed."""
    if cfg.trackers is not None:
        return list(cfg.trackers)
    if cfg.output_dir and cfg.tensorboard and importlib_available("tensorboard"):
        return ["tensorboard"]
    return []


class RunRecorder:
    """Writes a run's records from the main process; other processes only log to trackers.

    Without a run folder nothing is written and ``log`` is a no-op.
    """

    def __init__(self, accelerator: Accelerator, cfg: TrainConfig) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.run_dir = Path(cfg.output_dir) if cfg.output_dir else None
        names = trackers_for(cfg)
        run = self.run_dir.name if self.run_dir is not None else "run"
        logs = self.run_dir / "logs" if self.run_dir is not None else None
        self.trackers = (
            Trackers(names, cfg.tracker_project, run, logs, cfg.tracker_kwargs) if names else None
        )
        self._file: Any = None

    def start(self, counts: dict[str, int], resumed: TrainState) -> None:
        """Write the config and environment, start the trackers and open the metrics log;
        a fresh run (at step 0) logs the trainable parameter counts first, a resumed one
        first cuts the log back to where its checkpoint was taken."""
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config = dataclasses.asdict(cfg)
            RunFolder(self.run_dir).config.write_text(json.dumps(config, indent=2, default=str))
            record = {
                **environment(),
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
                "train_config_hash": config_hash(config),
            }
            RunFolder(self.run_dir).environment.write_text(
                json.dumps(record, indent=2, default=str)
            )
            log = self.run_dir / METRICS_NAME
            if resumed.step and log.is_file():
                _rewind(log, resumed)
            # A fresh run starts the log anew (a resume from no checkpoint included).
            self._file = open(log, "a" if resumed.step else "w")  # noqa: SIM115
            if resumed.step == 0:
                self._write({"step": 0, "strategy": cfg.strategy,
                             "trainable_parameters": counts["trainable"],
                             "total_parameters": counts["total"]})  # fmt: skip
        if self.trackers is not None:
            self.trackers.start({"train": dataclasses.asdict(cfg)})

    def position(self) -> int | None:
        """Bytes written to ``metrics.jsonl`` so far (None where this process writes none)."""
        return self._file.tell() if self._file is not None else None

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` and the numbers of ``record`` to the trackers."""
        if self._file is not None:
            self._write(record)
        if self.trackers is not None:
            self.trackers.log({k: v for k, v in record.items() if k != "step"}, record["step"])

    def close(self, summary: dict[str, Any] | None = None, step: int = 0) -> None:
        """Close the metrics log; the trackers get ``summary`` as final values at ``step``."""
        if self._file is not None:
            self._file.close()
        if self.trackers is not None:
            self.trackers.finish(summary, step)


def _rewind(log: Path, resumed: TrainState) -> None:
    """Drop what an interrupted run logged after the checkpoint ``resumed`` came from: the
    bytes past ``log_bytes``, or for a checkpoint that predates it, lines past its step."""
    if resumed.log_bytes is not None:
        with open(log, "r+b") as f:
            f.truncate(min(resumed.log_bytes, log.stat().st_size))
        return
    kept = [line for line in log.read_text().splitlines(keepends=True)
            if json.loads(line).get("step", 0) <= resumed.step]  # fmt: skip
    log.write_text("".join(kept))


@contextlib.contextmanager
def claimed_run_folder(cfg: TrainConfig) -> Iterator[None]:
    """The run folder locked against a second writer and claimed: a folder that holds a
    fit is refused unless this one resumes it or ``overwrite`` replaces it. Only the main
    process (RANK 0) locks and claims: the others write no files."""
    if not cfg.output_dir or os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = RunFolder(Path(cfg.output_dir))
    with folder.locked():
        folder.claim(cfg.resume_from is not None, cfg.overwrite, RunFolder.FIT_ENTRIES)
        yield
