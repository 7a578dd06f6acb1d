"""How much a fused model uses each modality, and how unevenly (modality imbalance).

For a trained classifier and a labelled split, per modality m:

- ``alone[m]``: accuracy with only m present, every other modality made absent through
  the model's missing-modality path: what m carries inside the fused model;
- ``contribution[m]``: accuracy with every modality minus accuracy with m absent (the
  drop-one ablation that ``explain`` reports per sample);
- ``utilisation[m] = (alone[m] - chance) / (full - chance)``, clipped to [0, 1]: the share
  of the model's skill above chance that m keeps on its own. ``chance`` is the accuracy of
  always predicting the split's most frequent class.

The imbalance degree is ``max_m utilisation[m] - min_m utilisation[m]``, in [0, 1]: 0 when
every modality alone keeps the same share of the model's skill, 1 when one keeps all of
it and another none. It is undefined (NaN) when the full model is no better than chance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import datasets

from ..data.spec import DatasetSpec
from ..engine import evaluate


def majority_rate(labels: list[Any]) -> float:
    """The accuracy of always predicting the most frequent label."""
    if not labels:
        raise ValueError("no labels: modality imbalance needs a labelled split")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def imbalance_from_accuracies(
    full: float, alone: Mapping[str, float], without: Mapping[str, float], chance: float
) -> dict[str, Any]:
    """Utilisation, contribution and the imbalance degree from the accuracies of the full
    model, of each modality alone and of each modality dropped (see the module docstring)."""
    skill = full - chance
    if skill > 0:
        utilisation = {m: min(1.0, max(0.0, (a - chance) / skill)) for m, a in alone.items()}
        degree = max(utilisation.values()) - min(utilisation.values())
    else:
        utilisation = {m: math.nan for m in alone}
        degree = math.nan
    return {
        "full": full, "chance": chance, "alone": dict(alone),
        "contribution": {m: full - without[m] for m in without}, "utilisation": utilisation,
        "imbalance_degree": degree,
        "dominant": max(alone, key=alone.__getitem__), "weakest": min(alone, key=alone.__getitem__),
    }  # fmt: skip


def modality_imbalance(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> dict[str, Any]:
    """Per-modality utilisation and contribution of ``model`` on ``ds``, and the imbalance
    degree; 2M + 1 evaluations for M modalities."""
    model.head.task.require_classes("modality imbalance (it is defined on accuracy)")
    modalities = model.modalities
    if len(modalities) < 2:
        raise ValueError(f"modality imbalance needs two modalities or more, got {modalities}")

    def accuracy(dropped: list[str]) -> float:
        return evaluate(model, ds, spec, batch_size, drop_modalities=dropped)["accuracy"]

    alone = {m: accuracy([n for n in modalities if n != m]) for m in modalities}
    without = {m: accuracy([m]) for m in modalities}
    return imbalance_from_accuracies(accuracy([]), alone, without, majority_rate(ds[spec.label]))
