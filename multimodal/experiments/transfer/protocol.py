"""The transfer protocol: source training, zero-shot, adaptation arms and scratch on every
k-shot episode, forgetting."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ...analysis.imbalance import modality_imbalance
from ...analysis.robustness import missing_modality_table
from ...core.config import config_hash
from ...core.run_folder import RunFolder
from ...data.split import Split
from ...engine.cache import FEATURES
from ...modeling.freezing import count_parameters
from ...modeling.model import MultimodalModel
from ..adaptations import Adaptation, create_adaptation
from ..config import RunConfig
from .plan import TransferPlan, split_size
from .report import EpisodeResult, TargetResult, TransferReport, update_cards
from .stages import (
    AdaptStage,
    ScratchStage,
    SourceStage,
    StudentStage,
    ZeroShotStage,
    scratch_overrides,
    shares_encoders,
)


def transfer(config: Mapping[str, Any] | RunConfig) -> TransferReport:
    """Run the five stages on a run config (data, encoders, fusion, head, train, transfer).

    Adapted and scratch models train on the same target rows: ``transfer.episodes`` k-shot
    draws per target (default 1), each evaluated on the whole target test split. Their
    defaults are ``transfer.adapt`` = {strategy: head, epochs: 20} and ``transfer.scratch``
    = {strategy: full, epochs: 20}, on top of ``train``. The arm is
    ``transfer.adaptation`` (a UDA method or source_only included), else ``adapt.strategy``.
    """
    run = RunConfig.from_dict(config)
    adaptation = run.transfer.adaptation or run.transfer.adapt.get("strategy", "head")
    return transfer_adaptations(run, [adaptation])[adaptation]


def transfer_adaptations(
    config: Mapping[str, Any] | RunConfig, adaptations: list[str]
) -> dict[str, TransferReport]:
    """``transfer`` for several adaptations at once: the source model, the zero-shot
    evaluation and the scratch baseline do not depend on the adaptation, so they are
    computed once and shared by the reports (keyed by adaptation). Encoder outputs come
    from the feature store wherever a stage's encoders are the source model's, frozen."""
    run = RunConfig.from_dict(config)
    arms = [create_adaptation(name) for name in adaptations]
    lookups = (FEATURES.hits, FEATURES.misses)
    times: dict[str, float] = {}
    tick = time.perf_counter()
    plan = TransferPlan.build(run)
    times["load"] = time.perf_counter() - tick
    _plan_progress(plan, arms)
    tick = time.perf_counter()
    model = SourceStage(plan).run()
    times["source_train"] = time.perf_counter() - tick
    if run.transfer.select != "random":
        plan.reselect(model)  # the rows to label, chosen by the source model
    reports = _reports(plan, model, arms, times)
    student_plan = plan.student()
    if student_plan is not None:
        _plan_progress(student_plan, arms)
        tick = time.perf_counter()
        student = StudentStage(student_plan, model).run()
        student_times = {"source_train": time.perf_counter() - tick}
        distillation = {**student_plan.distillation, "teacher_parameters": count_parameters(model)["total"],
                        "student_parameters": count_parameters(student)["total"]}  # fmt: skip
        for name, report in _reports(student_plan, student, arms, student_times).items():
            report.distillation = distillation
            reports[name].student = report.to_dict()
            _write(student_plan, report, len(arms))
    for report in reports.values():
        report.feature_store = {
            "hits": FEATURES.hits - lookups[0],
            "misses": FEATURES.misses - lookups[1],
        }
        _write(plan, report, len(arms))
    plan.progress.close()
    return reports


def _reports(plan: TransferPlan, model: MultimodalModel, arms: list[Adaptation],
             times: dict[str, float]) -> dict[str, TransferReport]:  # fmt: skip
    """Every stage after source training, for a trained source model (or a student): the
    zero-shot scores, the scratch baseline and each arm on every episode, one report per arm."""
    run = plan.run
    tick = time.perf_counter()
    scores = ZeroShotStage(plan, model).run()
    times["zero_shot_eval"] = time.perf_counter() - tick
    robustness = _robustness(plan, model, "source", plan.source["test"])
    imbalance = _imbalance(plan, model, times)
    tick = time.perf_counter()
    scratch = {t: [ScratchStage(plan, t, e).run() for e in plan.episodes[t]] for t in plan.targets}
    times["scratch"] = time.perf_counter() - tick
    reports: dict[str, TransferReport] = {}
    for arm in arms:
        tick = time.perf_counter()
        arm_robustness = dict(robustness)
        targets = {t: _target(plan, arm, model, t, scores, scratch[t], arm_robustness)
                   for t in plan.targets}  # fmt: skip
        run_config = run.to_dict()
        run_config.setdefault("transfer", {})["adaptation"] = arm.name
        reports[arm.name] = TransferReport(
            metric=plan.metric, source_domains=plan.sources, target_domains=plan.targets,
            source=scores["source"], targets=targets,
            stage_seconds={**times, "adapt": time.perf_counter() - tick},
            k_shot=None if run.transfer.target_fraction else int(run.transfer.k_shot),
            seed=plan.seed, config_hash=config_hash(run_config), config=run_config,
            robustness=arm_robustness, source_test_samples=split_size(plan.source["test"]),
            imbalance=imbalance, episodes=int(run.transfer.episodes), source_privacy=plan.source_privacy,
            source_fit=plan.source_fit,
        )  # fmt: skip
    return reports


def _write(plan: TransferPlan, report: TransferReport, arms: int) -> None:
    """The report in the plan's output folder, and the cards of the models it saved."""
    if plan.out is None:
        return
    arm = report.config["transfer"]["adaptation"]
    report.to_json(plan.out / (RunFolder.report if arms == 1 else f"report-{arm}.json"))
    update_cards(plan.out, report, arm, report.config.get("data") or {})


# The former name, kept for callers written before the rename.
transfer_strategies = transfer_adaptations


def _target(plan: TransferPlan, arm: Adaptation, model: MultimodalModel, target: str,
            scores: Mapping[str, float], scratch: list[float],
            robustness: dict[str, Any]) -> TargetResult:  # fmt: skip
    """One arm on every episode of one target; an arm that uses no labelled rows trains
    once and its scores stand for every episode."""
    test = plan.target[target]["test"]
    episodes: list[EpisodeResult] = []
    trained: tuple[float, float | None, float, int] | None = None
    for episode, scratch_score in zip(plan.episodes[target], scratch, strict=True):
        if arm.episodic or trained is None:
            adapted, used = AdaptStage(plan, arm, model, target, episode).run()
            cached = shares_encoders(adapted)
            on_target = plan.metrics(adapted, test, cached)
            trained = (on_target[plan.metric], on_target.get("ece"),
                       plan.score(adapted, plan.source["test"], cached), used)  # fmt: skip
            if episode.index == 0:
                robustness.update(_robustness(plan, adapted, target, test))
        score, ece, after, used = trained
        episodes.append(EpisodeResult(
            episode=episode.index, seed=episode.seed, rows=list(episode.rows or []), adapted=score,
            scratch=scratch_score, source_after=after, forgetting=scores["source"] - after,
            transfer_gain=score - scratch_score, adapt_samples=used, adapted_ece=ece,
        ))  # fmt: skip
    return TargetResult.from_episodes(scores[target], episodes, split_size(test))


def _plan_progress(plan: TransferPlan, arms: list[Adaptation]) -> None:
    """The progress bar's total: the optimizer steps of every stage."""
    train = plan.source["train"]
    source_rows = Split(train).known_size
    plan.progress.plan({}, source_rows)
    for episodes in plan.episodes.values():
        for episode in episodes:
            shots = len(episode.rows) if episode.rows is not None else len(episode.sample)
            plan.progress.plan(scratch_overrides(plan.run), shots)
            for arm in arms:
                if arm.episodic or episode.index == 0:
                    rows = shots if arm.episodic else source_rows
                    plan.progress.plan(arm.overrides(plan.run.transfer), rows)


def _robustness(plan: TransferPlan, model: MultimodalModel, name: str,
                test: Any) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """With ``transfer.robustness``: ``model`` on ``test`` with each modality missing."""
    if not plan.run.transfer.robustness:
        return {}
    return {name: missing_modality_table(model, test, plan.spec, plan.eval_batch, subsets="one")}


def _imbalance(plan: TransferPlan, model: MultimodalModel,
               times: dict[str, float]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """With ``transfer.imbalance``, the source model's modality imbalance per test split
    (nothing to measure for a model of one modality)."""
    if not plan.run.transfer.imbalance or len(model.modalities) < 2:
        return {}
    tick = time.perf_counter()
    tests = {"source": plan.source["test"], **{t: plan.target[t]["test"] for t in plan.targets}}
    out = {d: modality_imbalance(model, ds, plan.spec, plan.eval_batch) for d, ds in tests.items()}
    times["imbalance_eval"] = time.perf_counter() - tick
    return out
