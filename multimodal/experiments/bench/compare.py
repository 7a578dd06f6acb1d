"""A rerun against a reference: each row's metric paired with the reference's on common
seeds and episodes (``--compare-to``)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .stats import RANK, UTIL, two_level
from .store import NOT_KEYS

COMPARE_TOLERANCE = 0.02


def _row_key(row: Mapping[str, Any]) -> tuple:
    return tuple(
        sorted(
            (k, str(v))
            for k, v in row.items()
            if k not in NOT_KEYS and not k.startswith((UTIL, RANK))
        )
    )


def compare_results(
    new: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
    tolerance: float = COMPARE_TOLERANCE, metric: str = "adapted",
) -> dict[str, Any]:  # fmt: skip
    """Per row of the reference's table (per target, not "all"): the rerun's ``metric`` minus
    the reference's, paired on the (seed, episode) both hold, its mean and 95% CI over seeds
    and episodes (``stats.two_level``). A row agrees when the mean difference is within
    ``tolerance``; the comparison passes when every row present in both agrees."""

    def by_row(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[int, dict[int, float]]]:
        out: dict[tuple, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for r in rows:
            out[_row_key(r)][int(r["seed"])][int(r.get("episode", 0) or 0)] = float(r[metric])
        return out

    ours, theirs = by_row(new), by_row(reference)
    rows = []
    for key, ref in theirs.items():
        mine = ours.get(key)
        if mine is None:
            continue
        diff = {
            s: [mine[s][e] - ref[s][e] for e in sorted(set(mine[s]) & set(ref[s]))]
            for s in set(mine) & set(ref)
        }
        diff = {s: v for s, v in diff.items() if v}
        if not diff:
            continue
        stat = two_level(diff)
        rows.append({**dict(key), "reference": float(np.mean([v for s in ref.values() for v in s.values()])),
                     "rerun": float(np.mean([v for s in mine.values() for v in s.values()])),
                     "difference": stat["mean"], "difference_ci": stat["ci"],
                     "pairs": sum(len(v) for v in diff.values()), "within": abs(stat["mean"]) <= tolerance + 1e-12})  # fmt: skip
    outside = sum(not r["within"] for r in rows)
    return {"metric": metric, "tolerance": tolerance, "rows": rows, "checked": len(rows),
            "within": len(rows) - outside, "outside": outside, "passed": bool(rows) and outside == 0,
            "missing": len(set(theirs) - set(ours))}  # fmt: skip


def comparison_table(result: Mapping[str, Any]) -> str:
    """Markdown: one line per compared row, then the verdict."""
    rows = result["rows"]
    shown = ("reference", "rerun", "difference", "difference_ci", "pairs", "within")
    keys = [k for k in (rows[0] if rows else {}) if k not in shown and k != "suite"]
    lines = ["| " + " | ".join([*keys, "reference", "rerun", "rerun − reference", "pairs", "within"]) + " |",
             "|" + "---|" * (len(keys) + 5)]  # fmt: skip
    for r in rows:
        ci = "n/a" if math.isnan(r["difference_ci"]) else f"{r['difference_ci']:.3f}"
        cells = [str(r[k]) for k in keys] + [f"{r['reference']:.3f}", f"{r['rerun']:.3f}",
                                            f"{r['difference']:+.4f} ± {ci}", str(r["pairs"]),
                                            "yes" if r["within"] else "**no**"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    verdict = (
        f"\n\n{result['within']} of {result['checked']} rows within ±{result['tolerance']} of the reference "
        f"({result['metric']}, mean paired difference over common seeds and episodes; ± is its 95% CI); "
        f"{result['outside']} outside: {'PASSED' if result['passed'] else 'FAILED'}."
    )
    return "\n".join(lines) + verdict
