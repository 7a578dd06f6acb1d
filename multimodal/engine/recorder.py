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


def tracker_for(cfg: TrainConfig) -> str | None:
    """The accelerate tracker a run logs to: TensorBoard when asked for and installed."""
    if cfg.output_dir and cfg.tensorboard and importlib_available("tensorboard"):
        return "tensorboard"
    return None


class RunRecorder:
    """Writes a run's records from the main process; other processes only log to trackers.

    Without a run folder nothing is written and ``log`` is a no-op.
    """

    def __init__(self, accelerator: Accelerator, cfg: TrainConfig) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.run_dir = Path(cfg.output_dir) if cfg.output_dir else None
        self.tracker = tracker_for(cfg)
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
        if self.tracker is not None:
            scalars = {
                k: v
                for k, v in dataclasses.asdict(cfg).items()
                if isinstance(v, (int, float, str, bool))
            }
            accelerator.init_trackers(self.tracker, config=scalars)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` and the numbers of ``record`` to the trackers."""
        if self._file is not None:
            self._write(record)
        if self.tracker is not None:
            numbers = {
                k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"
            }
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        # end_training() would also destroy the process group, which later evaluations and the
        # transfer stages of the same launch still need: finish the trackers only.
        for tracker in self.accelerator.trackers:
            tracker.finish()
