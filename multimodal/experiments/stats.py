"""Statistics of benchmark tables: means with 95% CIs over seeds and the episodes nested in
them, paired differences on common episodes with their p-values, Holm's correction across
a table, and the minimum detectable difference of each comparison.

Values come as ``{seed: [one value per episode]}``. With 3 seeds or more, a row's CI is the
t-interval over the seed means on ``seeds - 1`` degrees of freedom: for seeds drawn at random
and episodes nested in them, the variance of the grand mean is ``var(seed means) / seeds``,
which holds the between-seed variance (source models differ) and the within-seed variance
(episodes differ) divided by the episodes per seed. With fewer seeds the seed level cannot
be estimated: the CI is then over every (seed, episode) value, or, for one value of an
accuracy, the binomial interval over its test rows; ``ci_over`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SEED_CI_MIN = 3  # seeds needed to estimate the seed level
ALPHA = 0.05
POWER = 0.8
Values = Mapping[Any, Sequence[float]]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and the half-width of its t-distribution confidence interval (nan for n < 2)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "ci": math.nan, "n": 0}
    if n < 2:
        return {"mean": float(x.mean()), "ci": math.nan, "n": 1}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return {"mean": float(x.mean()), "ci": float(half), "n": n}


def _units(values: Values) -> tuple[np.ndarray, str]:
    """The independent units the CI is computed over: seed means, or every value."""
    seeds = [np.asarray(v, dtype=float) for _, v in sorted(values.items()) if len(v)]
    if len(seeds) >= SEED_CI_MIN:
        return np.array([v.mean() for v in seeds]), "seeds"
    flat = np.concatenate(seeds) if seeds else np.array([])
    return flat, "episodes" if len(flat) >= 2 else "seeds"


def two_level(values: Values, n_test: int = 0, accuracy: bool = False) -> dict[str, Any]:
    """Mean over seeds (each the mean of its episodes) and its 95% CI (see the module).

    ``n_test``: test rows behind each value: an accuracy with fewer than ``SEED_CI_MIN``
    seeds of one episode each gets the binomial interval of all its test rows.
    """
    units, over = _units(values)
    episodes = sum(len(v) for v in values.values())
    stat: dict[str, Any] = {**mean_ci(units), "ci_over": over, "seeds": len(values),
                            "episodes": episodes}  # fmt: skip
    if over == "seeds" and stat["n"] >= SEED_CI_MIN:
        return stat
    if accuracy and n_test > 0 and episodes == len(values):  # one value per seed
        p = min(max(stat["mean"], 0.0), 1.0)
        stat["ci"] = 1.959964 * math.sqrt(p * (1 - p) / (n_test * episodes))
        stat["ci_over"] = "test samples"
    return stat


def paired(a: Values, b: Values) -> dict[str, Any]:
    """``a - b`` on the (seed, episode) pairs both hold: the mean difference, its CI and the
    two-sided one-sample t-test p-value over the same units as ``two_level`` (seed means of
    the differences with 3 seeds or more), with the standard error ``se`` and degrees of
    freedom ``df`` that ``detectable`` needs."""
    from scipy import stats

    diff = {s: np.asarray(a[s][: len(b[s])], dtype=float) - np.asarray(b[s][: len(a[s])], dtype=float)
            for s in sorted(set(a) & set(b))}  # fmt: skip
    out = two_level(diff)
    units, _ = _units(diff)
    n = len(units)
    if not np.isfinite(units).all():  # a metric a run does not have (no scratch model, say)
        out["p_value"] = math.nan
    elif n >= 2 and np.ptp(units) > 0:
        t = units.mean() / (units.std(ddof=1) / math.sqrt(n))
        out["p_value"] = float(2 * stats.t.sf(abs(t), n - 1))
    else:
        out["p_value"] = math.nan if n < 2 else (1.0 if units.mean() == 0 else 0.0)
    out["se"] = float(units.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    out["df"] = n - 1
    return out


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``paired`` for one value per seed: ``a[i] - b[i]`` over seeds i."""
    out = paired({i: [x] for i, x in enumerate(a)}, {i: [x] for i, x in enumerate(b)})
    return {k: v for k, v in out.items() if k not in ("se", "df")}


def detectable(se: float, df: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided t-test of standard error ``se`` on ``df``
    degrees of freedom finds at level ``alpha`` with probability ``power`` (noncentral t)."""
    from scipy import optimize, stats

    if df < 1 or not math.isfinite(se) or se <= 0:
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:
        lower = stats.nct.cdf(-crit, df, nc)  # the wrong-sign tail, nan where it underflows
        return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(lower) - power)

    upper = crit + 4.0
    while shortfall(upper) < 0:
        upper *= 2
    return float(se * optimize.brentq(shortfall, 0.0, upper, xtol=1e-9))


def seed_values(
    cells: Mapping[Any, Mapping[tuple[int, int], Sequence[float]]],
) -> dict[Any, dict[int, list[float]]]:
    """``{key: {(seed, episode): [values]}}`` as ``Values`` per key: each (seed, episode)'s
    values averaged (over targets, say), listed per seed in episode order."""
    out: dict[Any, dict[int, list[float]]] = {}
    for key, units in cells.items():
        seeds: dict[int, list[float]] = {}
        for (seed, _), values in sorted(units.items()):
            seeds.setdefault(seed, []).append(sum(values) / len(values))
        out[key] = seeds
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and is not counted)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
