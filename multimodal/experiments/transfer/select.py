"""Which target rows to label: ``transfer.select`` picks each episode's k rows per class
under the same budget as a random draw, from the source model's view of the target train
split.

- ``random``: k rows per class, uniformly (the default, and the control);
- ``entropy``: the rows whose predicted class distribution has the highest entropy;
- ``margin``: the rows with the smallest gap between the two most probable classes;
- ``kcenter``: a greedy k-center cover of the rows' fused features (Sener and Savarese
  2018, "core-set"): each pick is the row farthest from those picked.

Entropy and margin are baal's ``Entropy`` and ``Margin`` heuristics (scipy's entropy over
the classes; top-1 minus top-2 probability, lowest first), written out here: baal would
bring about 50 packages (Jupyter among them) for two lines. baal 2.1 has no k-center.

Selection is per class, within a candidate pool of each class's rows drawn with the
episode's seed (``transfer.select_pool`` of them, at least k), so episodes differ and the
same seed picks the same rows. Labels are read only to keep k per class, as the random
draw does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...data.loading import k_shot_indices

SELECTORS = ("random", "entropy", "margin", "kcenter")


def entropy(probs: np.ndarray) -> np.ndarray:
    """Each row's entropy (nats); high first is most uncertain."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Each row's top-1 minus top-2 probability; low first is most uncertain."""
    top = np.sort(probs, axis=-1)
    return top[:, -1] - top[:, -2]


def k_center(features: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy k-center: start at row ``first``, then add the row farthest (Euclidean)
    from every row picked so far, k rows in all (positions into ``features``)."""
    picked = [first]
    distance = np.linalg.norm(features - features[first], axis=1)
    while len(picked) < min(k, len(features)):
        nxt = int(np.argmax(distance))
        picked.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(features - features[nxt], axis=1))
    return picked


def select_rows(
    selector: str,
    labels: Sequence[int],
    k: int,
    seed: int,
    probs: np.ndarray | torch.Tensor | None = None,
    features: np.ndarray | torch.Tensor | None = None,
    pool: float = 0.5,
) -> list[int]:
    """k row indices per class (fewer where a class has fewer rows), sorted."""
    if selector not in SELECTORS:
        raise ValueError(f"transfer.select must be one of {SELECTORS}, got {selector!r}")
    if selector in ("entropy", "margin") and probs is None:
        raise ValueError(f"transfer.select={selector} needs the source model's probabilities")
    if selector == "kcenter" and features is None:
        raise ValueError("transfer.select=kcenter needs the source model's fused features")
    labels = np.asarray(labels)
    probs = np.asarray(probs) if probs is not None else None
    features = np.asarray(features, dtype=np.float64) if features is not None else None
    if selector == "random":  # the draw the protocol's episodes make
        return k_shot_indices(labels, k, seed)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        candidates = rows[: max(k, math.ceil(pool * len(rows)))]
        if selector == "entropy":
            order = np.argsort(-entropy(probs[candidates]), kind="stable")
            picked += candidates[order[:k]].tolist()
        elif selector == "margin":
            order = np.argsort(margin(probs[candidates]), kind="stable")
            picked += candidates[order[:k]].tolist()
        else:
            picked += candidates[k_center(features[candidates], k, 0)].tolist()
    return sorted(int(i) for i in picked)
