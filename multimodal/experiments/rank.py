"""Choose before you train: each candidate of a suite scored by the transferability
estimators (``analysis.transferability``) on each episode's labelled target rows, with no
fine-tuning; and those scores checked against what adaptation then measured.

A candidate is a fusion or one modality alone (the suite's encoder sets) under the arms
that keep the source model's features (``head``): its source model is trained as the
benchmark trains it (a grid point's seeds together, ``SourceStages``; the same seed gives
the same model), then one pass over each target's train split reads the fused features and
class probabilities from the feature store, and every episode is scored on its rows.

``validate`` joins the scores to a benchmark's ``results.csv`` on (candidate, seed, target,
episode) and reports, per estimator: Kendall's tau and weighted tau (scipy) between the
scores and the measured adapted accuracy across candidates within an episode, and the top-1
regret (the best candidate's adapted accuracy minus the pick's); each averaged over a seed's
episodes and targets, with a t CI over seeds. Baselines: a random pick (its expected
regret) and always concat. Each estimator's regret is compared with the random pick's on the
same seeds (paired t), Holm-corrected across estimators.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.transferability import ESTIMATORS
from .bench.plan import Suite, plan, unit_config
from .bench.stats import RANK, grid_keys
from .bench.store import read_results
from .config import RunConfig
from .transfer.ranking import target_scores

logger = logging.getLogger(__name__)


def rank_suite(suite: Suite, fusions: Sequence[str] | None = None, seeds: int | None = None,
               estimators: Sequence[str] | None = None, reuse: bool = True,
               zero_shot: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """One row per (candidate, seed, target, episode): each estimator's score. ``reuse``:
    read the source models an earlier command stored (``source_cache``) instead of training
    them; ``zero_shot``: also score each model on the target's test split (``validate``
    checks with it that the ranked models are the benchmark's)."""
    from .adaptations import create_adaptation
    from .transfer.plan import TransferPlan
    from .transfer.protocol import share_encoders
    from .transfer.stages import SourceStages

    names = list(estimators or ESTIMATORS.list())
    units = plan(suite, list(fusions or suite.fusions), seeds or suite.seeds)
    groups: dict[str, list[Any]] = defaultdict(list)
    for unit in units:  # a grid point's seeds together, as the benchmark runs them
        config = unit_config(suite, unit)
        groups[
            json.dumps(
                {k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str
            )
        ].append((unit, config))
    rows: list[dict[str, Any]] = []
    arms = [create_adaptation(a) for a in suite.adaptations or ["head"]]
    for group in groups.values():
        runs = [RunConfig.from_dict(config) for _, config in group]
        first = TransferPlan.build(runs[0])
        plans = [first, *(first.with_seed(run) for run in runs[1:])]
        for p in plans:
            share_encoders(p, arms)  # as the benchmark builds them
        models, _ = SourceStages(plans, reuse).run()
        feature_arms = [a for a in arms if changes_features(a)]
        for (unit, _), p, model in zip(group, plans, models, strict=True):
            rows += _episode_scores(suite.name, unit, p, model, names, feature_arms, zero_shot)
        first.progress.close()
    return rows


def changes_features(arm: Any) -> bool:
    """Whether an arm gives the source model other features before any label is read
    (test-time and unsupervised adaptation): then it is a candidate of its own, scored on the
    features it leaves. Arms that fine-tune on the episode's labels start from the source
    model's features, the candidate's."""
    return not arm.episodic and arm.name != "zero_shot"


def _episode_scores(suite: str, unit: Any, plan: Any, model: Any, names: list[str],
                    arms: list[Any], zero_shot: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The source model's candidate and, per arm of ``arms``, that arm's, on every episode;
    with ``zero_shot``, each model's score on the target's test split too."""
    from .transfer.stages import AdaptStage

    out, base = [], candidate(dict(unit.grid), unit.fusion)
    for target in plan.targets:
        test = plan.target[target]["test"]
        measured = {"zero_shot": plan.score(model, test)} if zero_shot else {}
        scored: list[tuple[str, Any, dict[str, float]]] = [(base, model, {})]
        for arm in arms:  # one adaptation per target serves every episode, as in the benchmark
            adapted, _ = AdaptStage(plan, arm, model, target, plan.episodes[target][0]).run()
            scored.append((f"{base}+{arm.name}", adapted,
                           {"arm_test": plan.score(adapted, test)} if zero_shot else {}))  # fmt: skip
        for name, m, extra in scored:
            for episode, scores in zip(plan.episodes[target], target_scores(plan, m, target, names),
                                       strict=True):  # fmt: skip
                out.append({"suite": suite, **dict(unit.grid), "candidate": name, "fusion": unit.fusion,
                            "source_domains": "+".join(plan.sources), "seed": unit.seed, "target": target,
                            "episode": episode.index, "k_shot": unit.k_shot, **measured,
                            "source_model": "reused" if plan.source_fit.get("reused") else "trained",
                            **extra, **scores})  # fmt: skip
    return out


def candidate(grid: dict[str, Any], fusion: str) -> str:
    """A candidate's name: its grid point's values (the encoder set among them), then the
    fusion (``pretrained/concat``); the fusion alone where the suite has no grid."""
    return "/".join([*(str(grid[k]) for k in sorted(grid)), fusion])


def _cell(row: dict[str, Any]) -> tuple:
    """The (sources, k, seed, target, episode) whose candidates are ranked together."""
    return (
        row["source_domains"],
        int(row["k_shot"]),
        int(row["seed"]),
        row["target"],
        int(row["episode"]),
    )


def _results(results_csv: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """A benchmark's results.csv rows (numbers as numbers) and its grid axes."""
    table = read_results(results_csv)
    return table, grid_keys(table)


def _row_candidate(row: dict[str, Any], grid: list[str]) -> str:
    return candidate({k: row[k] for k in grid}, row["fusion"])


def stage_rows(
    results_csv: Path, adaptation: str = "head"
) -> tuple[list[dict[str, Any]], list[str]]:
    """The scores a benchmark's rank stage wrote (``rank_<estimator>`` columns of its
    results.csv) as ``rank_suite`` rows, and the estimators found; no model is trained."""
    table, grid = _results(results_csv)
    names = [k[len(RANK) :] for k in (table[0] if table else {}) if k.startswith(RANK)]
    if not names:
        raise ValueError(f"{results_csv} has no {RANK}* columns: run the benchmark with "
                         "--rank (transfer.rank), or rank with --suite")  # fmt: skip
    keys = (
        "suite",
        *grid,
        "fusion",
        "source_domains",
        "seed",
        "target",
        "episode",
        "k_shot",
        "zero_shot",
    )
    rows = [{**{k: r[k] for k in keys}, "candidate": _row_candidate(r, grid), **{n: r[RANK + n] for n in names}}
            for r in table if r["adaptation"] == adaptation and r.get(RANK + names[0]) != ""]  # fmt: skip
    return rows, names


def _measured(results_csv: Path) -> dict[tuple, tuple[float, float]]:
    """(candidate, *cell) -> (adapted, zero-shot), from a benchmark's results: a fusion's
    candidate measured after head, ``<candidate>+<arm>`` after that arm."""
    table, grid = _results(results_csv)

    def name(r: dict[str, Any]) -> str:
        base = _row_candidate(r, grid)
        return base if r["adaptation"] == "head" else f"{base}+{r['adaptation']}"

    return {(name(r), *_cell(r)): (r["adapted"], r["zero_shot"]) for r in table}


def validate(rows: list[dict[str, Any]], results_csv: Path, estimators: Sequence[str],
             baseline: str = "concat") -> dict[str, Any]:  # fmt: skip
    """Per estimator: tau, weighted tau and top-1 regret against the measured adapted
    accuracy, each a mean ± CI over seeds; its regret against the random pick's and the
    fixed choice's (``baseline``), paired on seeds, Holm-corrected over the table."""
    from scipy.stats import kendalltau, weightedtau

    from .stats import holm, mean_ci, paired_comparison

    measured = _measured(results_csv)
    episodes: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    drift = 0.0  # the ranked source models against the benchmark's: their zero-shot scores
    for row in rows:
        key = (row["candidate"], *_cell(row))
        if key in measured:
            adapted, zero_shot = measured[key]
            drift = max(drift, abs(zero_shot - row["zero_shot"]))
            if "arm_test" in row:  # the arm's model is the benchmark's too
                drift = max(drift, abs(adapted - row["arm_test"]))
            episodes[_cell(row)].append({**row, "adapted": adapted})
    # a bare fusion name: that fusion at the first grid point (the suite's first encoder set)
    fixed_name = next(
        (r["candidate"] for r in rows if baseline in (r["candidate"], r["fusion"])), baseline
    )
    per_seed: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (_, _, seed, _, _), cands in episodes.items():
        if len(cands) < 2:  # nothing to rank
            continue
        adapted = np.array([c["adapted"] for c in cands])
        best = adapted.max()
        per_seed["random regret"][seed].append(float(best - adapted.mean()))
        fixed = [c["adapted"] for c in cands if c["candidate"] == fixed_name]
        if fixed:
            per_seed[f"{baseline} regret"][seed].append(float(best - fixed[0]))
        for name in estimators:
            scores = np.array([c[name] for c in cands])
            if not np.all(np.isfinite(scores)):
                continue
            per_seed[f"{name} tau"][seed].append(float(kendalltau(scores, adapted).statistic))
            per_seed[f"{name} weighted tau"][seed].append(
                float(weightedtau(scores, adapted).statistic)
            )
            per_seed[f"{name} regret"][seed].append(float(best - adapted[int(np.argmax(scores))]))
    seed_means = {
        k: {s: float(np.nanmean(v)) for s, v in by_seed.items()} for k, by_seed in per_seed.items()
    }
    summary = {k: {**mean_ci(list(v.values())), "seeds": len(v)} for k, v in seed_means.items()}
    tests: dict[str, dict[str, Any]] = {}
    for against in ("random", baseline):
        for name in estimators:
            mine, other = (
                seed_means.get(f"{name} regret", {}),
                seed_means.get(f"{against} regret", {}),
            )
            common = sorted(set(mine) & set(other))
            result = paired_comparison([mine[s] for s in common], [other[s] for s in common])
            tests[f"{name} - {against}"] = {"estimator": name, "against": against, "p": result["p_value"],
                                            "difference": {k: result[k] for k in ("mean", "ci", "n")}}  # fmt: skip
    # Holm over every test of the table: each estimator against the random pick and the fixed choice
    for key, p in zip(tests, holm([t["p"] for t in tests.values()]), strict=True):
        tests[key]["p_holm"] = p
    return {"summary": summary, "tests": tests, "episodes": len(episodes), "baseline": baseline,
            "zero_shot_max_difference": drift, "candidates": sorted({r["candidate"] for r in rows}),
            "baseline_candidate": fixed_name}  # fmt: skip


def validation_table(result: dict[str, Any], estimators: Sequence[str]) -> str:
    """The markdown table of ``validate``."""
    s, tests, baseline = result["summary"], result["tests"], result["baseline"]

    def cell(value: dict[str, Any] | None) -> str:
        if not value or value.get("n", 0) == 0:
            return "n/a"
        ci = "n/a" if math.isnan(value["ci"]) else f"{value['ci']:.3f}"
        return f"{value['mean']:+.3f} ± {ci}"

    def versus(name: str, against: str) -> str:
        t = tests.get(f"{name} - {against}", {})
        return f"{cell(t.get('difference'))} (p {t.get('p_holm', math.nan):.2g})"

    shown = result.get("baseline_candidate", baseline)
    lines = [f"| estimator | Kendall τ | weighted τ | top-1 regret | regret − random pick | regret − always {shown} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in estimators:
        lines.append(f"| {name} | {cell(s.get(name + ' tau'))} | {cell(s.get(name + ' weighted tau'))} | "
                     f"{cell(s.get(name + ' regret'))} | {versus(name, 'random')} | {versus(name, baseline)} |")  # fmt: skip
    lines.append(f"| random pick | 0 | 0 | {cell(s.get('random regret'))} | | |")
    lines.append(f"| always {shown} | | | {cell(s.get(baseline + ' regret'))} | | |")
    return "\n".join(lines)


def auto_regret(results_csv: Path, arms: Sequence[str] = ("head", "l2sp", "lwf")) -> dict[str, Any]:
    """``auto`` against the arms it chooses from, on the same (fusion, seed, target,
    episode): its regret against the oracle arm (the best of ``arms`` measured on the target
    test split) and its adapted accuracy minus head's. Means over a seed's cells, CIs over
    seeds, paired t on the per-seed values, Holm over the two tests."""
    import csv

    from .stats import holm, mean_ci, paired_comparison

    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    with open(results_csv, newline="") as f:
        for r in csv.DictReader(f):
            cells[(r["fusion"], int(r["seed"]), r["target"], int(r["episode"]))][
                r["adaptation"]
            ] = float(r["adapted"])
    per_seed: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (_, seed, _, _), arm in cells.items():
        if "auto" not in arm or not all(a in arm for a in arms):
            continue
        oracle = max(arm[a] for a in arms)
        per_seed["auto regret"][seed].append(oracle - arm["auto"])
        per_seed["head regret"][seed].append(oracle - arm["head"])
        per_seed["auto - head"][seed].append(arm["auto"] - arm["head"])
        for a in arms:
            per_seed[f"oracle is {a}"][seed].append(float(arm[a] == oracle))
    means = {k: [float(np.mean(v[s])) for s in sorted(v)] for k, v in per_seed.items()}
    out: dict[str, Any] = {k: mean_ci(v) for k, v in means.items()}
    tests = {
        k: paired_comparison(means.get(k, []), [0.0] * len(means.get(k, [])))["p_value"]
        for k in ("auto regret", "auto - head")
    }  # one-sample t on the seeds' means
    out["p_holm"] = dict(zip(tests, holm(list(tests.values())), strict=True))
    out["cells"] = sum(len(v) for v in per_seed["auto regret"].values())
    return out
