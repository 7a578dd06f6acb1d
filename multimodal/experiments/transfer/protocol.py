"""The transfer protocol: source training, zero-shot, adaptation arms and scratch on every
k-shot episode, forgetting."""

from __future__ import annotations

import math
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
from .plan import ENCODERS, TransferPlan, split_size
from .ranking import estimator_names, stage_scores
from .report import EpisodeResult, TargetResult, TransferReport, update_cards
from .stages import (
    AdaptEpisodes,
    AdaptStage,
    ScratchEpisodes,
    SourceStages,
    StudentStage,
    ZeroShotStage,
    per_plan,
    scratch_overrides,
    shares_encoders,
)


def transfer(config: Mapping[str, Any] | RunConfig, reuse_scratch: bool = False) -> TransferReport:
    """Run the five stages on a run config (data, encoders, fusion, head, train, transfer).

    Adapted and scratch models train on the same target rows: ``transfer.episodes`` k-shot
    draws per target (default 1), each evaluated on the whole target test split. Their
    defaults are ``transfer.adapt`` = {strategy: head, epochs: 20} and ``transfer.scratch``
    = {strategy: full, epochs: 20}, on top of ``train``. The arm is
    ``transfer.adaptation`` (a UDA method or source_only included), else ``adapt.strategy``.
    ``reuse_scratch``: read the scratch scores an earlier call stored for the same inputs
    (``scratch_cache``; ``multimodal transfer`` does) instead of training them again.
    """
    run = RunConfig.from_dict(config)
    adaptation = run.transfer.adaptation or run.transfer.adapt.get("strategy", "head")
    return transfer_adaptations(run, [adaptation], reuse_scratch)[adaptation]


def transfer_adaptations(
    config: Mapping[str, Any] | RunConfig, adaptations: list[str], reuse_scratch: bool = False
) -> dict[str, TransferReport]:
    """``transfer`` for several adaptations at once: the source model, the zero-shot
    evaluation and the scratch baseline do not depend on the adaptation, so they are
    computed once and shared by the reports (keyed by adaptation). Encoder outputs come
    from the feature store wherever a stage's encoders are the source model's, frozen."""
    return transfer_seeds([config], adaptations, reuse_scratch)[0]


def transfer_seeds(
    configs: list[Mapping[str, Any] | RunConfig], adaptations: list[str],
    reuse_scratch: bool = False,
) -> list[dict[str, TransferReport]]:  # fmt: skip
    """``transfer_adaptations`` for run configs that differ only in their seed (a
    benchmark's seeds of one grid point): every stage's fits for all of them together
    (``engine.episodes``), each run's report what it would be run alone, up to
    floating-point rounding. Stage seconds are the group's, divided by its size."""
    runs = [RunConfig.from_dict(c) for c in configs]
    _same_but_seed(runs)
    _check_protocol(runs[0], adaptations)
    arms = [create_adaptation(name) for name in adaptations]
    lookups = (FEATURES.hits, FEATURES.misses)
    times: dict[str, float] = {}
    tick = time.perf_counter()
    first = TransferPlan.build(runs[0])
    try:  # the bar ends before an error is printed, not on the same line
        plans = [first, *(first.with_seed(run) for run in runs[1:])]  # the data loaded once
        for plan in plans:
            share_encoders(plan, arms)
            _plan_progress(plan, arms)
        times["load"] = time.perf_counter() - tick
        tick = time.perf_counter()
        models, source_fits = SourceStages(plans).run()
        times["source_train"] = time.perf_counter() - tick
        for plan, model in zip(plans, models, strict=True):
            if plan.run.transfer.select != "random":
                plan.reselect(model)  # the rows to label, chosen by the source model
        reports = _reports(plans, models, arms, times, {"source": source_fits}, reuse_scratch)
        for plan, model, plan_reports in zip(plans, models, reports, strict=True):
            _student(plan, model, arms, plan_reports)
            for report in plan_reports.values():
                report.feature_store = {
                    "hits": FEATURES.hits - lookups[0],
                    "misses": FEATURES.misses - lookups[1],
                }
                if len(plans) > 1:
                    report.feature_store["runs"] = len(plans)  # the lookups of the whole group
                _write(plan, report, len(arms))
    finally:
        first.progress.close()
    return reports


LEAVE_ONE_OUT = "leave_one_out"


def _check_protocol(run: RunConfig, adaptations: list[str]) -> None:
    protocol = run.transfer.protocol
    if protocol not in ("transfer", LEAVE_ONE_OUT):
        raise ValueError(f"transfer.protocol must be transfer or {LEAVE_ONE_OUT}, got {protocol!r}")
    if run.transfer.rank:
        estimator_names(run.transfer.rank)
        if protocol == LEAVE_ONE_OUT:
            raise ValueError(f"transfer.rank scores an episode's labelled target rows; "
                             f"transfer.protocol {LEAVE_ONE_OUT} has none (drop transfer.rank)")  # fmt: skip
    if protocol == LEAVE_ONE_OUT and set(adaptations) != {"zero_shot"}:
        raise ValueError(
            f"transfer.protocol {LEAVE_ONE_OUT} never shows the target to a model, so its only "
            f"arm is zero_shot; got {adaptations} (set transfer.adaptation: zero_shot)"
        )


def share_encoders(plan: TransferPlan, arms: list[Adaptation]) -> None:
    """Take encoders from the process's pool (``plan.ENCODERS``) when no stage can change
    them: the source, scratch and every arm train with ``fit`` under the head strategy
    (encoders frozen, in eval mode) and without privacy (Opacus wraps the model)."""
    stages = [{}, scratch_overrides(plan.run), *(a.overrides(plan.run.transfer) for a in arms)]
    configs = [plan.run.stage(**keys) for keys in stages]
    frozen = all(c.strategy == "head" and not c.private for c in configs)
    plan.pool = ENCODERS if frozen and all(a.trains_with_fit for a in arms) else None


def _same_but_seed(runs: list[RunConfig]) -> None:
    """Runs batched together must differ in nothing but their seed."""

    def rest(run: RunConfig) -> dict[str, Any]:
        return {k: v for k, v in run.raw.items() if k != "seed"}

    if any(rest(run) != rest(runs[0]) for run in runs[1:]):
        raise ValueError("runs transferred together must differ only in their seed")


def _student(plan: TransferPlan, model: MultimodalModel, arms: list[Adaptation],
             reports: dict[str, TransferReport]) -> None:  # fmt: skip
    """With ``transfer.student``: the student distilled from ``model`` and put through every
    stage, its report the teacher's ``student``."""
    student_plan = plan.student()
    if student_plan is None:
        return
    share_encoders(student_plan, arms)
    _plan_progress(student_plan, arms)
    tick = time.perf_counter()
    student = StudentStage(student_plan, model).run()
    student_times = {"source_train": time.perf_counter() - tick}
    distillation = {**student_plan.distillation, "teacher_parameters": count_parameters(model)["total"],
                    "student_parameters": count_parameters(student)["total"]}  # fmt: skip
    for name, report in _reports([student_plan], [student], arms, student_times)[0].items():
        report.distillation = distillation
        reports[name].student = report.to_dict()
        _write(student_plan, report, len(arms))


def _reports(plans: list[TransferPlan], models: list[MultimodalModel], arms: list[Adaptation],
             times: dict[str, float], fits: dict[str, str] | None = None,
             reuse_scratch: bool = False) -> list[dict[str, TransferReport]]:  # fmt: skip
    """Every stage after source training, for each plan's trained source model (or
    student): the zero-shot scores, the scratch baseline and each arm on every episode,
    one report per arm and plan."""
    tick = time.perf_counter()
    scores = ZeroShotStage.run_all(plans, models)
    times["zero_shot_eval"] = time.perf_counter() - tick
    ranks = _rank(plans, models, times)
    robustness = [
        _robustness(p, m, "source", p.source["test"]) for p, m in zip(plans, models, strict=True)
    ]
    imbalance = [_imbalance(p, m, times) for p, m in zip(plans, models, strict=True)]
    tick = time.perf_counter()
    scratch: dict[str, list[list[float]]] = {}
    fits = dict(fits or {})
    for t in plans[0].targets:
        if plans[0].run.transfer.protocol == LEAVE_ONE_OUT:  # no target row is ever trained on
            scratch[t] = [[math.nan] * len(p.episodes[t]) for p in plans]
            fits[f"scratch {t}"] = f"none: {LEAVE_ONE_OUT}"
            continue
        scratch[t], fits[f"scratch {t}"] = ScratchEpisodes(plans, t, reuse_scratch).run()
    times["scratch"] = time.perf_counter() - tick
    reports: list[dict[str, TransferReport]] = [{} for _ in plans]
    for arm in arms:
        tick = time.perf_counter()
        arm_robustness, arm_fits = [dict(r) for r in robustness], dict(fits)
        targets = {t: _target(plans, arm, models, t, scores, scratch[t], arm_robustness, arm_fits)
                   for t in plans[0].targets}  # fmt: skip
        seconds = {**times, "adapt": time.perf_counter() - tick}
        same = _same_as_head(plans, arm, targets) if reuse_scratch else {}
        for i, plan in enumerate(plans):
            reports[i][arm.name] = _report(plan, arm, scores[i], {t: r[i] for t, r in targets.items()},
                                           {k: v / len(plans) for k, v in seconds.items()},
                                           arm_robustness[i], imbalance[i], arm_fits)  # fmt: skip
            reports[i][arm.name].same_as_head = same
            reports[i][arm.name].auto = _auto_choices(plan, arm)
            for target, ranked in ranks[i].items():
                episodes = reports[i][arm.name].targets[target].episodes
                for episode, episode_scores in zip(episodes, ranked, strict=True):
                    episode.transferability = episode_scores
    return reports


def _rank(plans: list[TransferPlan], models: list[MultimodalModel],
          times: dict[str, float]) -> list[dict[str, list[dict[str, float]]]]:  # fmt: skip
    """The rank stage (``transfer.rank``): per plan and target, each episode's estimator
    scores from the source model, before any arm adapts it."""
    if not plans[0].run.transfer.rank:
        return [{} for _ in plans]
    tick = time.perf_counter()
    out = [stage_scores(p, m) for p, m in zip(plans, models, strict=True)]
    times["rank"] = time.perf_counter() - tick
    return out


def _auto_choices(plan: TransferPlan, arm: Adaptation) -> list[dict[str, Any]]:
    """The choices ``auto`` made on this plan's episodes, each named by target and episode."""
    where = {e.seed: (t, e.index) for t, episodes in plan.episodes.items() for e in episodes}
    return [{"target": where[c["seed"]][0], "episode": where[c["seed"]][1], **c}
            for c in getattr(arm, "choices", []) if c["seed"] in where]  # fmt: skip


def _same_as_head(plans: list[TransferPlan], arm: Adaptation,
                  targets: dict[str, list[TargetResult]]) -> dict[str, bool]:  # fmt: skip
    """Per target, whether ``arm`` scored what head did on the same episodes in an earlier
    command (``scratch_cache.same_as_head``); targets where that is not known are left out."""
    from .scratch_cache import same_as_head

    out = {}
    for target, results in targets.items():
        scores = [[e.adapted for e in r.episodes] for r in results]
        if all(len(s) == len(p.episodes[target]) for s, p in zip(scores, plans, strict=True)):
            same = same_as_head(plans, arm, target, scores)
            if same is not None:
                out[target] = same
    return out


def _report(plan: TransferPlan, arm: Adaptation, scores: Mapping[str, float],
            targets: dict[str, TargetResult], seconds: dict[str, float], robustness: dict[str, Any],
            imbalance: dict[str, Any], fits: dict[str, str]) -> TransferReport:  # fmt: skip
    run = plan.run
    run_config = run.to_dict()
    run_config.setdefault("transfer", {})["adaptation"] = arm.name
    return TransferReport(
        metric=plan.metric, source_domains=plan.sources, target_domains=plan.targets,
        source=scores["source"], targets=targets, stage_seconds=seconds,
        k_shot=None if run.transfer.target_fraction else int(run.transfer.k_shot),
        seed=plan.seed, config_hash=config_hash(run_config), config=run_config,
        robustness=robustness, source_test_samples=split_size(plan.source["test"]),
        imbalance=imbalance, episodes=int(run.transfer.episodes), source_privacy=plan.source_privacy,
        source_fit=plan.source_fit, episode_fits=fits,
    )  # fmt: skip


def _write(plan: TransferPlan, report: TransferReport, arms: int) -> None:
    """The report in the plan's output folder, and the cards of the models it saved."""
    if plan.out is None:
        return
    arm = report.config["transfer"]["adaptation"]
    report.to_json(plan.out / (RunFolder.report if arms == 1 else f"report-{arm}.json"))
    update_cards(plan.out, report, arm, report.config.get("data") or {})


# The former name, kept for callers written before the rename.
transfer_strategies = transfer_adaptations


def _target(plans: list[TransferPlan], arm: Adaptation, models: list[MultimodalModel], target: str,
            scores: list[dict[str, float]], scratch: list[list[float]], robustness: list[dict[str, Any]],
            fits: dict[str, str]) -> list[TargetResult]:  # fmt: skip
    """One arm on every episode of one target, for each plan: an arm that trains with
    ``fit`` on each episode's rows fits all of them together (``AdaptEpisodes``, how is
    recorded in ``fits``); another trains per episode in turn, or, using no labelled rows,
    once per plan for all its episodes."""
    first = plans[0]
    if arm.episodic and arm.trains_with_fit:
        adapted, used, fits[f"adapt {target}"] = AdaptEpisodes(plans, arm, models, target).run()
    else:
        runs = [AdaptStage(p, arm, m, target, e).run() for p, m in zip(plans, models, strict=True)
                for e in (p.episodes[target] if arm.episodic else p.episodes[target][:1])]  # fmt: skip
        adapted, used = [m for m, _ in runs], [n for _, n in runs]
    cached = shares_encoders(*adapted)
    on_target = first.all_metrics(adapted, first.target[target]["test"], cached)
    after = first.scores(adapted, first.source["test"], cached)
    per = (
        (lambda values: per_plan(plans, values, target))
        if arm.episodic
        else (lambda values: per_plan(plans, values))
    )
    out = []
    for i, plan in enumerate(plans):
        models_i, metrics_i, after_i, used_i = (
            per(adapted)[i],
            per(on_target)[i],
            per(after)[i],
            per(used)[i],
        )
        robustness[i].update(_robustness(plan, models_i[0], target, plan.target[target]["test"]))
        out.append(_episodes(plan, target, scores[i], scratch[i], metrics_i, after_i, used_i))
    return out


def _episodes(plan: TransferPlan, target: str, scores: Mapping[str, float], scratch: list[float],
              metrics: list[dict[str, float]], after: list[float], used: list[int]) -> TargetResult:  # fmt: skip
    """A plan's episodes of one target; an arm that trained once stands for every episode."""
    results: list[EpisodeResult] = []
    for episode, scratch_score in zip(plan.episodes[target], scratch, strict=True):
        i = episode.index if len(metrics) > 1 else 0
        score = metrics[i][plan.metric]
        results.append(EpisodeResult(
            episode=episode.index, seed=episode.seed, rows=list(episode.rows or []), adapted=score,
            scratch=scratch_score, source_after=after[i], forgetting=scores["source"] - after[i],
            transfer_gain=score - scratch_score, adapt_samples=used[i], adapted_ece=metrics[i].get("ece"),
        ))  # fmt: skip
    result = TargetResult.from_episodes(
        scores[target], results, split_size(plan.target[target]["test"])
    )
    result.oracle = plan.oracle.get(target)
    return result


def _plan_progress(plan: TransferPlan, arms: list[Adaptation]) -> None:
    """The progress bar's total: the optimizer steps of every stage."""
    train = plan.source["train"]
    source_rows = Split(train).known_size
    plan.progress.plan({}, source_rows)
    for episodes in plan.episodes.values():
        for episode in episodes:
            shots = len(episode.rows) if episode.rows is not None else len(episode.sample)
            if plan.run.transfer.protocol != LEAVE_ONE_OUT:
                plan.progress.plan(scratch_overrides(plan.run), shots)
            for arm in arms:
                if arm.episodic or episode.index == 0:
                    rows = shots if arm.episodic else source_rows
                    if arm.name != "zero_shot":  # it takes no step
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
