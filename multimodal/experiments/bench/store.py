"""The result store: a benchmark's rows (``ResultRow``, one per unit x adaptation x target x
episode) from the units' reports, and ``results.csv`` written and read back."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import Unit
from .stats import EXTRA_METRICS, METRICS, MODEL_AXIS, RANK, STUDENT, TEACHER, UTIL

# Result-row columns that identify a row of the table (with the grid axes): not values,
# not the seed or episode, not timings.
NOT_KEYS = {"seed", "episode", "episode_seed", "metric", "adapt_samples", "test_samples",
            "source_test_samples", "config_hash", "wall_s", "adapted_ece", "dp_epsilon", *METRICS, *EXTRA_METRICS}  # fmt: skip


@dataclass
class ResultRow:
    """One adaptation x target x episode of one unit: the columns of ``results.csv``.

    ``grid``: the unit's grid point (a column per axis); ``imbalance``: the source model's
    imbalance columns, with ``transfer.imbalance`` (``imbalance_degree``, ``util_<m>``...);
    ``adapted_ece``: the adapted model's target ECE, where the report has it.
    """

    suite: str
    grid: dict[str, Any]
    source_domains: str
    target: str
    k_shot: int
    fusion: str
    adaptation: str
    seed: int
    metric: str
    source: float
    zero_shot: float
    test_samples: int
    source_test_samples: int
    config_hash: str
    wall_s: float
    train_s: float
    episode: int
    episode_seed: int | None
    adapted: float
    scratch: float
    transfer_gain: float
    forgetting: float
    adapt_samples: int
    adapted_ece: float | None = None
    dp_epsilon: float | None = None  # train.dp: the source training's budget spent
    oracle: float | None = None  # leave_one_out: the test metric selected on target validation
    imbalance: dict[str, float] = field(default_factory=dict)
    transferability: dict[str, float] = field(default_factory=dict)  # transfer.rank's scores

    def to_dict(self) -> dict[str, Any]:
        """The CSV row: the grid axes after ``suite``, the imbalance columns after
        ``train_s``, ``adapted_ece`` last and only where known."""
        head = {"suite": self.suite, **self.grid}
        fixed = ("source_domains", "target", "k_shot", "fusion", "adaptation", "seed", "metric",
                 "source", "zero_shot", "test_samples", "source_test_samples", "config_hash",
                 "wall_s", "train_s")  # fmt: skip
        tail = ("episode", "episode_seed", "adapted", "scratch", "transfer_gain", "forgetting",
                "adapt_samples")  # fmt: skip
        row = {**head, **{k: getattr(self, k) for k in fixed}, **self.imbalance}
        row.update({k: getattr(self, k) for k in tail})
        for key in ("adapted_ece", "dp_epsilon", "oracle"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        row.update({f"{RANK}{k}": v for k, v in self.transferability.items()})
        return row


def result_rows(
    suite: str, unit: Unit, reports: Mapping[str, Mapping[str, Any]]
) -> list[ResultRow]:
    """One row per adaptation x target x episode (a report from before episodes: one); with
    ``transfer.student``, the student's rows beside the teacher's, told apart by ``model``."""
    rows = []
    for adaptation, report in reports.items():
        student = report.get("student")
        if student is None:
            rows += _report_rows(suite, unit, adaptation, report, dict(unit.grid))
            continue
        for model, own in ((TEACHER, report), (STUDENT, student)):
            rows += _report_rows(
                suite, unit, adaptation, own, {**dict(unit.grid), MODEL_AXIS: model}
            )
    return rows


def _report_rows(suite: str, unit: Unit, adaptation: str, report: Mapping[str, Any],
                 grid: dict[str, Any]) -> list[ResultRow]:  # fmt: skip
    rows = []
    for target, result in report["targets"].items():
        common = dict(
            suite=suite, grid=grid, source_domains="+".join(report["source_domains"]),
            target=target, k_shot=unit.k_shot, fusion=unit.fusion, adaptation=adaptation,
            seed=unit.seed, metric=report["metric"], source=report["source"],
            zero_shot=result["zero_shot"], test_samples=result.get("test_samples", 0),
            source_test_samples=report.get("source_test_samples", 0),
            config_hash=report["config_hash"], wall_s=sum(report["stage_seconds"].values()),
            train_s=report["stage_seconds"].get("source_train", math.nan),
            imbalance=_imbalance_columns(report.get("imbalance") or {}, target),
            dp_epsilon=(report.get("source_privacy") or {}).get("dp_epsilon"),
            oracle=result.get("oracle"),
        )  # fmt: skip
        episodes = result.get("episodes") or [{**result, "episode": 0, "seed": None}]
        for e in episodes:
            rows.append(ResultRow(**common, episode=e["episode"], episode_seed=e["seed"],
                                  **{m: e[m] for m in ("adapted", "scratch", "transfer_gain",
                                                       "forgetting", "adapt_samples")},
                                  adapted_ece=e.get("adapted_ece"),
                                  transferability=e.get("transferability") or {}))  # fmt: skip
    return rows


def _imbalance_columns(imbalance: Mapping[str, Mapping[str, Any]], target: str) -> dict[str, float]:
    """A result row's modality-imbalance columns (with ``transfer.imbalance``): the source
    model's imbalance degree on the source and the target test split, the accuracy it loses
    on the source test split without its dominant modality, and each modality's utilisation
    there (``util_<modality>``)."""
    source = imbalance.get("source")
    if not source:
        return {}
    return {
        "imbalance_degree": source["imbalance_degree"],
        "target_imbalance_degree": imbalance[target]["imbalance_degree"],
        "dominant_loss": source["contribution"][source["dominant"]],
        **{f"{UTIL}{m}": u for m, u in source["utilisation"].items()},
    }


def robustness_rows(unit: Unit, reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model x dropped modality: the source model on the source test split
    (once per unit), and each adaptation's adapted model on its target's test split."""
    rows: list[dict[str, Any]] = []

    def add(model: str, domain: str, metric: str, table: Sequence[Mapping[str, Any]]) -> None:
        for r in table:
            rows.append({
                **dict(unit.grid), "k_shot": unit.k_shot, "fusion": unit.fusion, "seed": unit.seed,
                "model": model, "domain": domain, "dropped": "+".join(r["dropped"]) or "none",
                "metric": metric, "value": r[metric], "loss": r["loss"], "relative": r["relative"],
            })  # fmt: skip

    first = next(iter(reports.values()), {})
    if (first.get("robustness") or {}).get("source"):
        add("source", "source", first["metric"], first["robustness"]["source"])
    for adaptation, report in reports.items():
        tables = report.get("robustness") or {}
        for domain in sorted(d for d in tables if d != "source"):
            add(f"adapted-{adaptation}", domain, report["metric"], tables[domain])
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], sort: bool = False) -> None:
    """Rows as CSV, with the union of their keys as columns (sorted by every column if asked)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    if sort:
        rows = sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in fields))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """``results.csv`` back as rows: numbers as numbers (a file from before episodes: each
    row is episode 0)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                try:
                    row[k] = (
                        int(v)
                        if k in ("seed", "episode", "k_shot")
                        else (float(v) if k in NOT_KEYS or k.startswith(RANK) else v)
                    )
                except ValueError:
                    row[k] = v
            row.setdefault("episode", 0)
            rows.append(row)
    return rows
