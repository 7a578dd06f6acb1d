"""The training state that a checkpoint saves beside accelerate's, so a run can resume, and the
loop's clock."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.io import write_json_atomic
from ..core.run_folder import RunFolder

STATE_NAME = RunFolder.trainer_state


@dataclass
class TrainState:
    """Where a run is: counters, the best evaluation so far, early stopping and the history.

    ``batch_in_epoch`` counts source batches (micro-batches), so a resumed run skips exactly
    the batches the interrupted one consumed.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    # Bytes of metrics.jsonl when the checkpoint was taken: a resumed run cuts the log back
    # to them, so lines an interrupted run wrote after its last checkpoint are not doubled.
    log_bytes: int | None = None

    @property
    def evaluated(self) -> bool:
        """Whether the weights at ``step`` were evaluated already (a run resumed from the
        end of an epoch, or of a finished run, must not count that evaluation twice)."""
        return bool(self.history) and self.history[-1]["step"] == self.step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / STATE_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        """The state saved in a checkpoint folder (keys added later default)."""
        return cls(**json.loads((folder / STATE_NAME).read_text()))


@dataclass
class LoopClock:
    """Training-loop time and throughput, evaluations left out."""

    samples: int = 0
    seconds: float = 0.0
    steps: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    data_seconds: float = 0.0  # of ``seconds``, waiting for the loader's next batch
    first_step_s: float | None = None  # the first optimizer step, compilation included

    def timed(self, loader: Any) -> Iterator[Any]:
        """``loader``'s batches, the wait for each added to ``data_seconds``."""
        batches = iter(loader)
        while True:
            tick = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.data_seconds += time.perf_counter() - tick
            yield batch
