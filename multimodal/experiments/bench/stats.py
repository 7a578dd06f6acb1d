"""Benchmark result rows summarised: per grid point x k x fusion x adaptation x target (and
the mean over targets, "all"), the mean and 95% CI of every metric over seeds and episodes,
and the paired comparisons (fusion - concat, fusion - best unimodal, adapted - scratch,
adaptation - head) with Holm-corrected p-values and minimum detectable differences.
The statistics are in ``stats``."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..stats import ALPHA, detectable, holm, mean_ci, paired, two_level

METRICS = ("source", "zero_shot", "adapted", "scratch", "transfer_gain", "forgetting")
# Per-run numbers summarised beside METRICS when the rows hold them (transfer.imbalance).
EXTRA_METRICS = ("imbalance_degree", "target_imbalance_degree", "dominant_loss", "train_s",
                 "oracle")  # fmt: skip
UTIL = "util_"  # the prefix of per-modality utilisation columns
RANK = "rank_"  # the prefix of transfer.rank's estimator columns
# Columns of result rows that are not grid axes.
ROW_KEYS = {"suite", "source_domains", "target", "k_shot", "fusion", "adaptation", "seed", "episode",
            "episode_seed", "metric", "adapt_samples", "test_samples", "source_test_samples", "config_hash",
            "wall_s", "adapted_ece", "dp_epsilon", *METRICS, *EXTRA_METRICS}  # fmt: skip
# Keys of a summary entry that are not grid axes.
STAT_KEYS = {"k_shot", "fusion", "adaptation", "target", "seeds", "n", "episodes", "best_unimodal",
             "gain_vs_unimodal", "utilisation", *METRICS, *EXTRA_METRICS}  # fmt: skip
COMPARISONS = ("transfer_gain", "gain_vs_unimodal")  # and every "<metric>_vs_<name>"
VERSUS = ("adapted_vs_", "zero_shot_vs_")  # the prefixes of paired comparisons by name
# transfer.student: the column that tells the student's rows from the teacher's.
MODEL_AXIS, TEACHER, STUDENT = "model", "teacher", "student"
ABSOLUTE = ("source", "zero_shot", "adapted", "scratch")
BASE_ADAPTATION = "head"
# Columns of robustness rows that are not grid axes (with "seed" per run, "seeds" summarised).
ROBUSTNESS_KEYS = {
    "k_shot",
    "fusion",
    "model",
    "domain",
    "dropped",
    "metric",
    "value",
    "loss",
    "relative",
}
# Unimodal baselines run as fusions named "<modality>-only": the suite's config with one encoder.
ONLY = "-only"
# (seed) -> the values of each episode, in episode order.
Series = dict[int, list[dict[str, float]]]


def unimodal(fusion: str) -> str | None:
    """The modality of a unimodal baseline's name (``image-only`` -> ``image``), else None."""
    return fusion[: -len(ONLY)] if fusion.endswith(ONLY) else None


def grid_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in r if not k.startswith((UTIL, RANK))} - ROW_KEYS)


def entry_grid_keys(entry: Mapping[str, Any]) -> list[str]:
    """The grid axes of a summary entry, in its order."""
    return [k for k in entry if k not in STAT_KEYS and not k.startswith(VERSUS)]


def _series(rows: Sequence[Mapping[str, Any]], keys: list[str]) -> dict[tuple, Series]:
    """(*grid, k, fusion, adaptation, target) -> seed -> per-episode values (with test
    sizes), with target "all" holding the mean over targets of each (seed, episode) where
    there are two targets or more."""
    by: dict[tuple, dict[int, dict[int, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    overall: dict[tuple, list[dict[str, float]]] = defaultdict(list)
    for r in rows:
        key = (*[r.get(k) for k in keys], r["k_shot"], r["fusion"], r["adaptation"])
        value = {**{m: r[m] for m in METRICS}, "n": r.get("test_samples", 0),
                 "n_source": r.get("source_test_samples", 0),
                 **{m: r[m] for m in r if m in EXTRA_METRICS or m.startswith(UTIL)}}  # fmt: skip
        episode = int(r.get("episode", 0) or 0)
        by[(*key, r["target"])][r["seed"]][episode] = value
        overall[(*key, r["seed"], episode)].append(value)
    for (*key, seed, episode), members in overall.items():
        if len(members) < 2:  # one target: an "all" row would only copy it
            continue
        averaged = {
            m: float(np.mean([v[m] for v in members]))
            for m in members[0]
            if m not in ("n", "n_source")
        }
        averaged.update(n=sum(v["n"] for v in members), n_source=members[0]["n_source"])
        by[(*key, "all")][seed][episode] = averaged
    return {
        key: {s: [eps[e] for e in sorted(eps)] for s, eps in seeds.items()}
        for key, seeds in by.items()
    }


def _values(series: Series, metric: str) -> dict[int, list[float]]:
    return {s: [e[metric] for e in episodes] for s, episodes in series.items()}


def _per_seed(series: Series, metric: str) -> dict[int, list[float]]:
    """A metric that does not vary with the episode (source, zero-shot): one value per seed."""
    return {s: [float(np.mean([e[metric] for e in episodes]))] for s, episodes in series.items()}


def summarize(
    rows: Sequence[Mapping[str, Any]], baseline: str = "concat",
    versus: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per grid point x k x fusion x adaptation x target (and "all"): mean and 95% CI of every
    metric (``stats.two_level``) with n (test rows per target), seeds and episodes; adapted
    paired against ``baseline``, the best unimodal baseline (``<m>-only``), scratch (the
    transfer gain), the ``head`` adaptation and, per grid axis of ``versus`` (axis ->
    reference value, a suite's ``versus``), the same point at the reference value
    (``adapted_vs_<value>``); Holm's correction across every p-value."""
    keys = grid_keys(rows)
    accuracy = bool(rows) and rows[0]["metric"] == "accuracy"
    groups = _series(rows, keys)
    summary = []
    for key, series in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        *grid_values, k, fusion, adaptation, target = key
        first = series[min(series)][0]
        entry: dict[str, Any] = {**dict(zip(keys, grid_values, strict=True)), "k_shot": k, "fusion": fusion,
                                 "adaptation": adaptation, "target": target, "seeds": sorted(series),
                                 "n": first["n"], "episodes": max(len(v) for v in series.values())}  # fmt: skip
        for m in METRICS:
            n_test = first["n_source"] if m == "source" else first["n"]
            values = _per_seed(series, m) if m in ("source", "zero_shot") else _values(series, m)
            entry[m] = two_level(values, n_test if m in ABSOLUTE else 0, accuracy)
        entry["transfer_gain"] = {**entry["transfer_gain"], **_paired(series, series, "scratch")}
        _extra_metrics(entry, series)
        base = groups.get((*grid_values, k, baseline, adaptation, target))
        if base is not None and fusion != baseline and not unimodal(fusion):
            entry[f"adapted_vs_{baseline}"] = _paired(series, base)
        head = groups.get((*grid_values, k, fusion, BASE_ADAPTATION, target))
        if head is not None and adaptation != BASE_ADAPTATION:
            entry[f"adapted_vs_{BASE_ADAPTATION}"] = _paired(series, head)
        _versus_teacher(entry, series, groups, keys, key)
        _versus_axis(entry, series, groups, keys, key, versus or {})
        if not unimodal(fusion):
            _versus_unimodal(entry, series, groups, (*grid_values, k), (adaptation, target))
        summary.append(entry)
    correct(summary)
    return summary


def comparisons(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The paired comparisons of a summary entry, by name."""
    names = [*COMPARISONS, *sorted(k for k in entry if k.startswith(VERSUS))]
    return [
        (n, entry[n]) for n in names if isinstance(entry.get(n), Mapping) and "p_value" in entry[n]
    ]


def correct(summary: Sequence[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Holm-adjusted p-values (``p_holm``) across every comparison of the table, and each
    comparison's minimum detectable difference (``mdd``) at 80% power at Bonferroni's level
    alpha / m, the strictest Holm applies, so a true difference of that size is found with
    80% probability whatever its rank."""
    found = [cmp for entry in summary for _, cmp in comparisons(entry)]
    adjusted = holm([c["p_value"] for c in found])
    tests = sum(not math.isnan(c["p_value"]) for c in found)
    for cmp, p in zip(found, adjusted, strict=True):
        cmp["p_holm"] = p
        cmp["mdd"] = detectable(
            cmp.pop("se", math.nan), int(cmp.pop("df", 0)), alpha / max(tests, 1)
        )
        cmp["tests"] = tests


def _paired(a: Series, b: Series, against: str = "adapted") -> dict[str, Any]:
    """``a``'s adapted metric minus ``b``'s ``against`` metric on common (seed, episode)."""
    return paired(_values(a, "adapted"), _values(b, against))


def _versus_teacher(entry: dict[str, Any], series: Series, groups: Mapping[tuple, Series],
                    keys: list[str], key: tuple) -> None:  # fmt: skip
    """A student's zero-shot (per seed) and adapted metric paired against its teacher's,
    the same grid point's row with ``model: teacher``."""
    if entry.get(MODEL_AXIS) != STUDENT:
        return
    at = keys.index(MODEL_AXIS)
    teacher = groups.get((*key[:at], TEACHER, *key[at + 1 :]))
    if teacher is None:
        return
    entry["zero_shot_vs_teacher"] = paired(
        _per_seed(series, "zero_shot"), _per_seed(teacher, "zero_shot")
    )
    entry["adapted_vs_teacher"] = _paired(series, teacher)


def _versus_axis(entry: dict[str, Any], series: Series, groups: Mapping[tuple, Series],
                 keys: list[str], key: tuple, versus: Mapping[str, Any]) -> None:  # fmt: skip
    """Adapted paired against the same point with grid axis ``axis`` at its reference
    value (a domain-generalisation objective against ERM, say)."""
    for axis, reference in versus.items():
        if axis not in keys or entry[axis] == reference:
            continue
        at = keys.index(axis)
        other = groups.get((*key[:at], reference, *key[at + 1 :]))
        if other is not None:
            entry[f"adapted_vs_{reference}"] = _paired(series, other)


def _extra_metrics(entry: dict[str, Any], series: Series) -> None:
    """Mean and CI over seeds of the imbalance columns and wall time, where present."""
    first = series[min(series)][0]
    for m in EXTRA_METRICS:
        if m in first:
            entry[m] = mean_ci(v[0] for v in _per_seed(series, m).values())
    util = sorted(k for k in first if k.startswith(UTIL))
    if util:
        entry["utilisation"] = {
            k[len(UTIL) :]: mean_ci(v[0] for v in _per_seed(series, k).values()) for k in util
        }


def _versus_unimodal(entry: dict[str, Any], series: Series, groups: Mapping[tuple, Series],
                     prefix: tuple, suffix: tuple) -> None:  # fmt: skip
    """The best single modality's adapted metric (by its mean) and this fusion's paired gain
    over it."""
    candidates = {
        unimodal(key[len(prefix)]): values
        for key, values in groups.items()
        if key[: len(prefix)] == prefix and key[len(prefix) + 1 :] == suffix and unimodal(key[len(prefix)])
    }  # fmt: skip
    if not candidates:
        return
    means = {m: two_level(_values(v, "adapted"))["mean"] for m, v in candidates.items()}
    best = max(candidates, key=lambda m: means[m])
    entry["best_unimodal"] = {"modality": best, **two_level(_values(candidates[best], "adapted"))}
    entry["gain_vs_unimodal"] = _paired(series, candidates[best])


def overall_entries(summary: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries over all targets: the "all" rows, or each row where a run had one target."""
    keyed = defaultdict(list)
    for e in summary:
        axes = [*entry_grid_keys(e), "k_shot", "fusion", "adaptation"]
        keyed[tuple((k, str(e[k])) for k in axes)].append(e)
    out = []
    for group in keyed.values():
        every = [e for e in group if e["target"] == "all"]
        out += every or (group if len(group) == 1 else [])
    return out


def summarize_robustness(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI over seeds of the metric, loss and relative metric per grid point x
    k x fusion x model x domain x dropped modality."""
    grid_keys = sorted({k for r in rows for k in r} - ROBUSTNESS_KEYS - {"seed"})
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        key = (
            *[r.get(k) for k in grid_keys],
            r["k_shot"],
            r["fusion"],
            r["model"],
            r["domain"],
            r["dropped"],
        )
        groups[key].append(r)
    out = []
    for key, members in groups.items():
        *grid_values, k, fusion, model, domain, dropped = key
        out.append({
            **dict(zip(grid_keys, grid_values, strict=True)), "k_shot": k, "fusion": fusion, "model": model,
            "domain": domain, "dropped": dropped, "metric": members[0]["metric"],
            "value": mean_ci(m["value"] for m in members), "loss": mean_ci(m["loss"] for m in members),
            "relative": mean_ci(m["relative"] for m in members), "seeds": sorted(m["seed"] for m in members),
        })  # fmt: skip
    return out
