"""The record of a run: ``config.json``, ``environment.json``, ``metrics.jsonl`` and trackers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..core.config import config_hash
from ..core.provenance import environment, importlib_available
from .config import TrainConfig
from .trackers import Trackers


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

    def start(self, counts: dict[str, int], resumed_at: int) -> None:
        """Write the config and environment, start the trackers and open the metrics log;
        a fresh run (``resumed_at`` 0) logs the trainable parameter counts first."""
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config = dataclasses.asdict(cfg)
            (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
            record = {
                **environment(),
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
                "train_config_hash": config_hash(config),
            }
            (self.run_dir / "environment.json").write_text(
                json.dumps(record, indent=2, default=str)
            )
            self._file = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115
            if resumed_at == 0:
                self._write({"step": 0, "strategy": cfg.strategy,
                             "trainable_parameters": counts["trainable"],
                             "total_parameters": counts["total"]})  # fmt: skip
        if self.trackers is not None:
            self.trackers.start({"train": dataclasses.asdict(cfg)})

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
