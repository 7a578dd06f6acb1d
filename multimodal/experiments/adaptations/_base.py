"""The contract of an adaptation arm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets

from ...engine.config import FitData, TrainConfig
from ...engine.training import fit

# Modality balancing (train.balance) is a source-training method: the later stages train
# without it unless their own section sets it, so every balancing arm shares one baseline.
UNBALANCED: dict[str, Any] = {"balance": "none", "balance_kwargs": {}}


@dataclass
class AdaptContext:
    """What an arm may train on for one target and episode.

    source: the source training split (no validation: the adapt stage has none);
    target_train: the target's whole train split; rows: the episode's labelled rows of it
    (None for a stream, whose episode is ``sample``, rows drawn from a reservoir).
    """

    source: FitData
    target_train: datasets.Dataset
    rows: list[int] | None
    sample: datasets.Dataset | None = None


class Adaptation:
    """One arm of the adapt stage: a copy of the source model trained by ``fit`` with the
    run's ``train`` section under ``overrides`` on ``data``.

    ``episodic``: it trains on the episode's labelled rows, so each episode trains anew;
    otherwise one training per target serves every episode. ``whole_splits``: it reads
    whole splits, which a stream cannot give.
    """

    registry_name: ClassVar[str]
    episodic: ClassVar[bool] = True
    whole_splits: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.registry_name

    def overrides(self, transfer: Any) -> dict[str, Any]:
        """The train keys this stage sets, from the run's ``transfer`` settings."""
        raise NotImplementedError

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        """What ``fit`` trains on, and how many target rows that uses."""
        raise NotImplementedError

    @property
    def trains_with_fit(self) -> bool:
        """Whether the arm trains by ``fit`` alone (its episodes can be fitted together)."""
        return type(self).train is Adaptation.train

    def train(
        self, model: Any, data: FitData, cfg: TrainConfig, on_step: Sequence[Any] = ()
    ) -> None:
        """Adapt ``model`` in place: by default ``fit`` on ``data`` under ``cfg``; an arm
        that does not train by gradient steps on labels (test-time adaptation) overrides it."""
        fit(model, data, cfg, on_step=on_step)


def stage_keys(
    defaults: Mapping[str, Any], section: Mapping[str, Any], **fixed: Any
) -> dict[str, Any]:
    """A stage's train keys: its defaults, then the user's section, then what the arm fixes."""
    return {**defaults, **section, **fixed}
