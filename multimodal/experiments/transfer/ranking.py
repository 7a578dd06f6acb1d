"""The rank stage of the transfer protocol (``transfer.rank``): each episode's labelled
target rows scored by the transferability estimators (``analysis.transferability``) from the
source model, before any arm adapts it; ``multimodal rank`` scores its candidates the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...analysis.transferability import ESTIMATORS, Evidence, score_many
from ...data.split import Split
from ...engine.evaluate import model_view


def estimator_names(names: Sequence[str] | str) -> list[str]:
    """``transfer.rank`` as estimator names: ``all`` (alone or in a list) is every one; an
    unknown name gets one line naming the known ones."""
    names = [names] if isinstance(names, str) else list(names)
    if "all" in names:
        return ESTIMATORS.list()
    for name in names:
        ESTIMATORS.get(name)
    return names


def target_scores(plan: Any, model: Any, target: str, names: list[str]) -> list[dict[str, float]]:
    """Each episode of ``target``: every estimator's score on its labelled rows, from one
    pass of ``model`` (fused features and class probabilities) over the target train split."""
    train = plan.target[target]["train"]
    probs, fused = model_view(model, train, plan.spec, plan.run.train)
    labels = np.asarray(Split(train).column(plan.spec.label))
    evidences = []
    for episode in plan.episodes[target]:
        if episode.rows is None:
            raise ValueError("ranking needs the target's rows by index; this target is streamed")
        rows = list(episode.rows)
        evidences.append(Evidence(fused[rows], probs[rows], labels[rows]))
    scores = {n: score_many(n, evidences) for n in names}
    return [{n: scores[n][i] for n in names} for i in range(len(evidences))]


def stage_scores(plan: Any, model: Any) -> dict[str, list[dict[str, float]]]:
    """The rank stage of the transfer protocol (``transfer.rank``): per target, each
    episode's estimator scores."""
    names = estimator_names(plan.run.transfer.rank)
    return {t: target_scores(plan, model, t, names) for t in plan.targets}
