"""Experiment trackers through accelerate's integrations (TensorBoard, MLflow, W&B, ...).

A run logs to ``trackers`` under one ``project`` (the MLflow experiment, the W&B project,
a TensorBoard folder) and one ``run`` name. MLflow reads its store from
``MLFLOW_TRACKING_URI``; W&B honours ``WANDB_MODE=offline``; each tracker's own keyword
arguments come from ``tracker_kwargs[name]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

from ..core.config import close_matches


def check_trackers(names: Sequence[str], logging_dir: str | Path | None) -> list[str]:
    """``names`` checked: each one a tracker accelerate knows, installed, and given a
    folder when it writes files."""
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(
                f"train.trackers: unknown tracker {name!r}; {close_matches(name, list(LOGGER_TYPE_TO_CLASS))}"
            )
        if name not in available:
            raise ValueError(
                f"train.trackers: {name!r} is not installed (pip install {name}); installed: "
                f"{', '.join(sorted(available)) or 'none'}"
            )
        if LOGGER_TYPE_TO_CLASS[name].requires_logging_directory and logging_dir is None:
            raise ValueError(f"train.trackers: {name!r} writes files and the run has no output_dir")
    return list(names)


def _construct(name: str, project: str, run: str, logging_dir: str | None,
               kwargs: Mapping[str, Any]) -> GeneralTracker:  # fmt: skip
    cls = LOGGER_TYPE_TO_CLASS[name]
    kwargs = dict(kwargs)
    if name == "tensorboard":  # one folder per run under the project's
        return cls(f"{project}/{run}", logging_dir, **kwargs)
    if name == "mlflow":
        return cls(experiment_name=project, run_name=kwargs.pop("run_name", run), **kwargs)
    if name == "wandb":
        return cls(project, **{"name": run, **kwargs})
    if cls.requires_logging_directory:
        return cls(project, logging_dir, **kwargs)
    return cls(project, **kwargs)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a.b`` keys; lists and other values a tracker cannot store as
    a hyperparameter become strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "none" if value is None else value
        else:
            out[name] = str(value)
    return out


class Trackers:
    """The trackers of one run: started with its configuration, logged to per step,
    closed with a final summary. Only the main process writes (accelerate's rule)."""

    def __init__(self, names: Sequence[str], project: str, run: str,
                 logging_dir: str | Path | None = None,
                 tracker_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> None:  # fmt: skip
        check_trackers(names, logging_dir)
        folder = str(logging_dir) if logging_dir is not None else None
        kwargs = tracker_kwargs or {}
        self.trackers = [_construct(n, project, run, folder, kwargs.get(n, {})) for n in names]

    def start(self, config: Mapping[str, Any]) -> Trackers:
        values = flat_config(config)
        for tracker in self.trackers:
            tracker.start()
            tracker.store_init_configuration(values)
        return self

    def log(self, values: Mapping[str, Any], step: int) -> None:
        numbers = {
            k: v
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            for tracker in self.trackers:
                tracker.log(numbers, step=step)

    def finish(self, summary: Mapping[str, Any] | None = None, step: int = 0) -> None:
        """The summary's numbers as ``final/<key>`` at ``step``, then close each tracker."""
        if summary:
            self.log({f"final/{k}": v for k, v in flat_config(summary).items()}, step)
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
