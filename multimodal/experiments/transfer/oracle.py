"""The leave-one-out protocol's oracle (DomainBed's test-domain validation, reported apart
from the real selection): at each evaluation of the source fit, the model's metric on
every held-out target's validation and test splits; the oracle score of a target is the
test metric at the evaluation whose target-validation metric was best. It reads the
target's labels, so it is never what the protocol selects with: it bounds what selection
on the training domains leaves on the table."""

from __future__ import annotations

from typing import Any

from ...engine import TrainState
from ...modeling.tasks import METRIC_MODES
from .plan import TransferPlan


class TargetOracle:
    """An ``on_evaluate`` callback of a source fit (it never stops the fit)."""

    def __init__(self, plan: TransferPlan, model: Any, metric: str) -> None:
        self.plan, self.model, self.metric = plan, model, metric
        self.seen: dict[str, list[tuple[float, float]]] = {t: [] for t in plan.targets}

    def __call__(self, metrics: dict[str, float], state: TrainState) -> bool:
        for target, splits in self.plan.target.items():
            scores = [self.plan.metrics(self.model, splits[s])[self.metric]
                      for s in ("validation", "test")]  # fmt: skip
            self.seen[target].append((scores[0], scores[1]))
        return False

    def scores(self) -> dict[str, float]:
        """Per target, the test metric at the best target-validation evaluation (the first
        of equals); none where the fit never evaluated."""
        sign = -1.0 if METRIC_MODES.get(self.metric, "max") == "min" else 1.0
        out = {}
        for target, seen in self.seen.items():
            if seen:
                best = max(range(len(seen)), key=lambda i: (sign * seen[i][0], -i))
                out[target] = seen[best][1]
        return out
