"""What a transfer run reports: per target, the mean over episodes of each stage's metric,
and every episode's own numbers."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.io import write_json_atomic
from ...core.run_folder import RunFolder


@dataclass
class EpisodeResult:
    """One k-shot draw of one target: the rows adapt and scratch trained on, and their scores."""

    episode: int
    seed: int  # depends only on (the run's seed, the target, the episode index)
    rows: list[int]  # indices into the target's train split (empty: no labelled rows)
    adapted: float
    scratch: float
    source_after: float
    forgetting: float  # source metric before adaptation minus after
    transfer_gain: float  # adapted minus scratch
    adapt_samples: int
    adapted_ece: float | None = None  # the adapted model's ECE on the target test split
    # transfer.rank: each estimator's score on these rows from the source model, before adapting
    transferability: dict[str, float] | None = None


@dataclass
class TargetResult:
    """A target's zero-shot metric and, over its episodes, the means of the others."""

    zero_shot: float
    adapted: float
    scratch: float
    source_after: float
    forgetting: float  # source metric before adaptation minus after
    transfer_gain: float  # adapted minus scratch
    adapt_samples: int
    test_samples: int = 0  # rows of the target's test split behind each metric (0: not recorded)
    episodes: list[EpisodeResult] = field(default_factory=list)
    adapted_ece: float | None = None  # mean over episodes (classification only)
    # leave_one_out: the test metric at the source fit's best target-validation evaluation
    oracle: float | None = None

    @classmethod
    def from_episodes(
        cls, zero_shot: float, episodes: list[EpisodeResult], test_samples: int
    ) -> TargetResult:
        def mean(name: str) -> float:
            return float(sum(getattr(e, name) for e in episodes) / len(episodes))

        return cls(
            zero_shot=zero_shot, adapted=mean("adapted"), scratch=mean("scratch"),
            source_after=mean("source_after"), forgetting=mean("forgetting"),
            transfer_gain=mean("transfer_gain"), adapt_samples=episodes[0].adapt_samples,
            test_samples=test_samples, episodes=episodes,
            adapted_ece=mean("adapted_ece") if all(e.adapted_ece is not None for e in episodes) else None,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetResult:
        episodes = [EpisodeResult(**e) for e in data.get("episodes") or []]
        return cls(**{**data, "episodes": episodes})


@dataclass
class TransferReport:
    metric: str
    source_domains: list[str]
    target_domains: list[str]
    source: float  # source test metric after source training
    targets: dict[str, TargetResult]
    stage_seconds: dict[str, float]
    k_shot: int | None
    seed: int
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    # With transfer.robustness: missing-modality tables of the source model on the source
    # test split ("source") and of each adapted model (episode 0) on its target's test split.
    robustness: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source_test_samples: int = 0
    # With transfer.imbalance: the source model's modality imbalance on the source test
    # split ("source") and on each target's test split.
    imbalance: dict[str, dict[str, Any]] = field(default_factory=dict)
    episodes: int = 1
    # Feature store lookups of this run: encoder outputs reused ("hits") or computed.
    feature_store: dict[str, int] = field(default_factory=dict)
    # With train.dp: the source training's budget spent and its noise (FitResult.privacy).
    source_privacy: dict[str, Any] | None = None
    # With transfer.student: the student's own report (as a dict), every stage run on it.
    student: dict[str, Any] | None = None
    # A student's report: the distillation settings and both models' parameter counts.
    distillation: dict[str, Any] | None = None
    # The source training's throughput (steps, rows/s, loader wait): plan.fit_summary.
    source_fit: dict[str, Any] = field(default_factory=dict)
    # How each stage's episode fits ran ("scratch T", "adapt T"): "batched" (together,
    # engine.episodes) or "sequential: <why not>".
    episode_fits: dict[str, str] = field(default_factory=dict)
    # Per target, whether this arm's adapted scores equal (to 4 decimals) head's on the same
    # episodes in an earlier command (scratch_cache); absent where head's are not known.
    same_as_head: dict[str, bool] = field(default_factory=dict)
    # transfer.adaptation: auto: per target and episode, the arm chosen and each arm's
    # cross-validated score inside the episode's rows.
    auto: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferReport:
        targets = {k: TargetResult.from_dict(v) for k, v in data["targets"].items()}
        return cls(**{**data, "targets": targets})

    @classmethod
    def from_json(cls, path: str | Path) -> TransferReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def table(self) -> str:
        """The per-target table, the arm it ran named above it, each column explained below
        it; with several episodes, the means ± 95% CI half-widths over them."""
        m = self.metric
        arm = (self.config.get("transfer") or {}).get("adaptation", "?")
        shots = f"{self.k_shot}-shot" if self.k_shot is not None else "a fraction of the target"
        lines = [f"adaptation: {arm} ({shots}, {self.episodes} episode{'s' * (self.episodes > 1)} "
                 f"per target, seed {self.seed})"]  # fmt: skip
        width = 17 if self.episodes > 1 else 9
        head = (f"{'target':<12} {'source ' + m:>16} {'zero-shot':>10} {'adapted':>{width}} "
                f"{'scratch':>{width}} {'gain':>{width}} {'forgetting':>{width + 2}}")  # fmt: skip
        lines += [head, "-" * len(head)]
        for t, r in self.targets.items():
            cells = [_cell(r, k, width, signed) for k, signed in
                     (("adapted", False), ("scratch", False), ("transfer_gain", True))]  # fmt: skip
            lines.append(f"{t:<12} {self.source:>16.4f} {r.zero_shot:>10.4f} {' '.join(cells)} "
                         f"{_cell(r, 'forgetting', width + 2, True)}")  # fmt: skip
        lines += ["", *_legend(m, self.episodes)]
        if self.auto:
            picked = Counter(c["chosen"] for c in self.auto)
            lines.append("auto chose, by cross-validation inside each episode's rows: "
                         + ", ".join(f"{a} {n}x" for a, n in picked.most_common()))  # fmt: skip
        lines += [f"note: on {t}, {arm}'s adapted scores equal head's on the same episodes to four "
                  "decimals: the arm changed nothing measurable here (check its weight)"
                  for t, same in self.same_as_head.items() if same]  # fmt: skip
        if self.student is not None:
            student = TransferReport.from_dict(self.student)
            sizes = student.distillation or {}
            lines += ["", f"student ({sizes.get('student_parameters', '?')} parameters; "
                          f"teacher {sizes.get('teacher_parameters', '?')}):", student.table()]  # fmt: skip
        return "\n".join(lines)


def _cell(result: TargetResult, key: str, width: int, signed: bool) -> str:
    """A mean, with ± the 95% CI half-width (t over the episodes) when there are several."""
    from ..stats import mean_ci

    mean = getattr(result, key)
    values = [getattr(e, key) for e in result.episodes]
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    if len(values) > 1:
        text += f" ± {mean_ci(values)['ci']:.4f}"
    return f"{text:>{width}}"


def _legend(metric: str, episodes: int) -> list[str]:
    over = f", mean over {episodes} episodes ± 95% CI half-width (t)" if episodes > 1 else ""
    return [
        f"source {metric}: the source model on the source test split",
        "zero-shot: the source model on the target test split, before adaptation",
        f"adapted: after the adaptation above, on the target test split{over}",
        f"scratch: the same architecture trained only on the same target rows{over}",
        f"gain: adapted - scratch, what the source training bought{over}",
        f"forgetting: source {metric} before adaptation - after it (positive: forgot){over}",
    ]


def update_cards(out: Path, report: TransferReport, arm: str, spec: dict[str, Any]) -> None:
    """The model cards of the run folders a transfer wrote: the source model's with its
    source test and zero-shot target results, each adapted model's (episode 0) with its
    target's adapted and forgetting results."""
    from ...modeling.card import DomainResult, update_card

    source = "+".join(report.source_domains)
    folder = out / "source" / RunFolder.best_model
    if folder.is_dir():
        results = [DomainResult(source, "source test", report.metric, report.source)]
        results += [
            DomainResult(t, "zero-shot", report.metric, r.zero_shot)
            for t, r in report.targets.items()
        ]
        update_card(folder, spec=spec, trained_on=report.source_domains, results=results)
    for target, result in report.targets.items():
        folder = out / f"adapt-{arm}-{target}" / RunFolder.best_model
        if folder.is_dir() and result.episodes:
            first = result.episodes[0]
            update_card(folder, spec=spec, trained_on=[*report.source_domains, target], results=[
                DomainResult(target, "adapted", report.metric, first.adapted),
                DomainResult(source, "forgetting", report.metric, first.forgetting),
            ])  # fmt: skip
