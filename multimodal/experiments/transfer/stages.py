"""The stages of the transfer protocol, each an object that gives its train config and its
data: source training, zero-shot evaluation, an adaptation arm on one episode, and the
scratch baseline on the same episode."""

from __future__ import annotations

from typing import Any

import datasets

from ...core.run_folder import RunFolder
from ...data.loading import select_domains
from ...data.split import Split
from ...engine import FitData, TrainConfig, fit
from ...engine.episodes import EpisodeFits, fit_episodes
from ...modeling.copying import copy_model
from ...modeling.freezing import encoder_modules, frozen_encoders
from ...modeling.model import MultimodalModel, build_model, reads_data_columns
from ..adaptations import UNBALANCED, Adaptation, AdaptContext
from . import scratch_cache, source_cache
from .oracle import TargetOracle
from .plan import Episode, TransferPlan, fit_summary, fitting_rows

SCRATCH_DEFAULTS: dict[str, Any] = {
    "strategy": "full",
    "epochs": 20,
    "patience": None,
    **UNBALANCED,
}


def shares_encoders(*models: MultimodalModel) -> bool:
    """Whether each model trained with every encoder frozen: its encoder outputs are those
    of the model it started from, worth keeping in the feature store for the next stage.
    Models holding the same encoders are checked once."""
    distinct = {encoder_modules(m): m for m in models}.values()
    return all(len(frozen_encoders(m)) == len(m.encoders) for m in distinct)


def scratch_overrides(run: Any) -> dict[str, Any]:
    """The train keys of the scratch stage over the run's ``train`` section."""
    return {**SCRATCH_DEFAULTS, **run.transfer.scratch}


class SourceStage:
    """A model built from the run config and trained on the source domains (``train``)."""

    def __init__(self, plan: TransferPlan) -> None:
        self.plan = plan

    def train_config(self) -> TrainConfig:
        return self.plan.stage({}, self.plan.folder("source"), self.plan.seed)

    def data(self) -> FitData:
        plan = self.plan
        train, validation = plan.source["train"], plan.source["validation"]
        domains = plan.sources if Split(train).streamed else None
        return FitData(plan.spec, train, validation, domains=domains)

    def run(self) -> MultimodalModel:
        """The trained source model; sets the plan's metric."""
        plan = self.plan
        rows = lambda: fitting_rows(plan.source["train"], plan.spec)  # noqa: E731  (read if needed)
        model = build_model(plan.run.model.to_dict(), rows, seed=plan.seed, encoders=plan.pool)
        result = fit(model, self.data(), self.train_config(), on_step=plan.progress.stage("source"))
        plan.metric, plan.source_privacy = result.metric, result.privacy
        plan.source_fit = fit_summary(result)
        return model


class StudentStage:
    """The student of ``transfer.student`` (its own plan, ``student_plan``) distilled from the
    source model on the source train split, and on the targets' train splits unlabelled
    with ``unlabelled_targets``; saved where the source model's run folder would be."""

    def __init__(self, plan: TransferPlan, teacher: MultimodalModel) -> None:
        self.plan, self.teacher = plan, teacher

    def unlabelled(self) -> datasets.Dataset | None:
        plan = self.plan
        if not plan.distillation["unlabelled_targets"]:
            return None
        return datasets.concatenate_datasets([
            Split(plan.target[t]["train"]).require_held("transfer.student.unlabelled_targets")
            for t in plan.targets
        ])  # fmt: skip

    def run(self) -> MultimodalModel:
        """The trained student; sets its plan's metric."""
        from ..distill import distill

        plan, settings = self.plan, self.plan.distillation
        train = Split(plan.source["train"]).require_held("transfer.student")
        model = build_model(
            plan.run.model.to_dict(), fitting_rows(train, plan.spec), seed=plan.seed
        )
        cfg = plan.stage({}, None, plan.seed)
        result = distill([self.teacher], model, plan.spec, train, cfg, settings["temperature"],
                         settings["alpha"], self.unlabelled(), plan.source["validation"],
                         on_step=plan.progress.stage("student"))  # fmt: skip
        plan.metric, plan.source_privacy = result.metric, result.privacy
        plan.source_fit = fit_summary(result)
        if plan.out is not None:
            model.save_pretrained(plan.out / "source" / RunFolder.best_model)
        return model


class ZeroShotStage:
    """The source model on the source test split and on each target's, as it is."""

    def __init__(self, plan: TransferPlan, model: MultimodalModel) -> None:
        self.plan, self.model = plan, model

    def data(self) -> dict[str, datasets.Dataset]:
        return {"source": self.plan.source["test"],
                **{t: self.plan.target[t]["test"] for t in self.plan.targets}}  # fmt: skip

    def run(self) -> dict[str, float]:
        return {name: self.plan.score(self.model, ds) for name, ds in self.data().items()}

    @staticmethod
    def run_all(plans: list[TransferPlan], models: list[MultimodalModel]) -> list[dict[str, float]]:
        """Each plan's source model on each test split, the models of a group together."""
        splits = ZeroShotStage(plans[0], models[0]).data()
        scores = {name: plans[0].scores(models, ds) for name, ds in splits.items()}
        return [{name: values[i] for name, values in scores.items()} for i in range(len(models))]


class AdaptStage:
    """A copy of the source model trained by one adaptation arm for one target and episode."""

    def __init__(self, plan: TransferPlan, arm: Adaptation, model: MultimodalModel,
                 target: str, episode: Episode) -> None:  # fmt: skip
        self.plan, self.arm, self.model = plan, arm, model
        self.target, self.episode = target, episode

    def train_config(self) -> TrainConfig:
        plan, arm = self.plan, self.arm
        folder = plan.folder(f"adapt-{arm.name}-{self.target}", self.episode.index)
        return plan.stage(arm.overrides(plan.run.transfer), folder, self.episode.seed)

    def data(self) -> tuple[FitData, int]:
        plan, episode = self.plan, self.episode
        train = plan.source["train"]
        if self.arm.whole_splits:
            Split(train).require_held(f"adaptation {self.arm.name!r} (it trains on whole splits)")
        streamed = Split(train).streamed
        source = FitData(plan.spec, train, domains=plan.sources if streamed else None)
        rows = list(episode.rows) if episode.rows is not None else None
        context = AdaptContext(source, plan.target[self.target]["train"], rows, episode.sample)
        return self.arm.data(context)

    def prepare(self) -> tuple[MultimodalModel, TrainConfig, FitData, int]:
        """The copy of the source model to train, its config and data, and how many target
        rows it trains on."""
        cfg = self.train_config()
        # Encoders that stay frozen are shared with the source model, not copied.
        shared = {id(self.model.encoders): self.model.encoders} if cfg.strategy == "head" else {}
        adapted: MultimodalModel = copy_model(self.model, shared)  # type: ignore[assignment]
        data, used = self.data()
        return adapted, cfg, data, used

    def run(self) -> tuple[MultimodalModel, int]:
        """The adapted model and how many target rows it trained on."""
        adapted, cfg, data, used = self.prepare()
        self.arm.train(adapted, data, cfg, self.plan.progress.stage(f"adapt {self.arm.name}"))
        return adapted, used


class ScratchStage:
    """The baseline: a fresh model (the source model's initial weights where they do not
    depend on the rows) trained on the episode's rows alone (``transfer.scratch``)."""

    def __init__(self, plan: TransferPlan, target: str, episode: Episode) -> None:
        self.plan, self.target, self.episode = plan, target, episode

    def train_config(self) -> TrainConfig:
        plan = self.plan
        folder = plan.folder(f"scratch-{self.target}", self.episode.index)
        return plan.stage(scratch_overrides(plan.run), folder, self.episode.seed)

    def initial_model(self, share_encoders: bool) -> MultimodalModel:
        """``build_model`` on the episode's rows with the run's seed. When no encoder fits
        anything on rows (pretrained tokenizers, no tabular statistics), that model is the
        same for every episode: it is built once per plan and copied, its encoders shared
        between copies when they stay frozen (``share_encoders``)."""
        plan = self.plan
        if plan.scratch_template is None and any(
            reads_data_columns(e) for e in plan.run.model.encoders.values()
        ):
            plan.scratch_template = False  # its columns come from the rows: built per episode
        if plan.scratch_template is None:
            template = build_model(plan.run.model.to_dict(), seed=plan.seed, encoders=plan.pool)
            fits = any(e.fits_on_data() for e in template.encoders.values())
            plan.scratch_template = False if fits else template
        if plan.scratch_template is False:
            rows = fitting_rows(self.episode.dataset(plan.target[self.target]["train"]), plan.spec)
            return build_model(plan.run.model.to_dict(), rows, seed=plan.seed, encoders=plan.pool)
        template = plan.scratch_template
        shared = {id(template.encoders): template.encoders} if share_encoders else {}
        return copy_model(template, shared)  # type: ignore[return-value]

    def data(self) -> FitData:
        train = self.plan.target[self.target]["train"]
        if self.episode.rows is None:
            return FitData(self.plan.spec, self.episode.dataset(train))
        return FitData(self.plan.spec, train, train_indices=list(self.episode.rows))

    def run(self) -> float:
        """The scratch model's metric on the target's test split."""
        plan = self.plan
        cfg = self.train_config()
        model = self.initial_model(share_encoders=cfg.strategy == "head")
        fit(model, self.data(), cfg, on_step=plan.progress.stage("scratch"))
        return plan.score(model, plan.target[self.target]["test"], shares_encoders(model))


def fit_all(
    plan: TransferPlan, models: list[MultimodalModel], datas: list[FitData],
    configs: list[TrainConfig], stage: str, on_evaluate: list[list[Any]] | None = None,
) -> EpisodeFits:  # fmt: skip
    """Fit each model on its data: together (``fit_episodes``) unless
    ``transfer.batch_episodes`` is off; says how they ran (``EpisodeFits.mode``).
    ``on_evaluate``: each model's callbacks on its fit's evaluations."""
    on_step = plan.progress.stage(stage)
    if plan.run.transfer.batch_episodes:
        return fit_episodes(models, datas, configs, on_step, on_evaluate)
    calls = on_evaluate or [[] for _ in models]
    results = [
        fit(m, d, c, on_evaluate=e, on_step=on_step)
        for m, d, c, e in zip(models, datas, configs, calls, strict=True)
    ]
    return EpisodeFits(0, len(models), "transfer.batch_episodes is off", results)


def per_plan(
    plans: list[TransferPlan], values: list[Any], target: str | None = None
) -> list[list[Any]]:
    """``values`` listed plan by plan (one per episode of ``target``, or one per plan)
    split into one list per plan."""
    out, start = [], 0
    for plan in plans:
        count = len(plan.episodes[target]) if target is not None else 1
        out.append(values[start : start + count])
        start += count
    return out


def per_domain(plan: TransferPlan, model: MultimodalModel) -> dict[str, float]:
    """The selected source model's metric on each source domain's validation rows (the fit
    selects on all of them pooled)."""
    validation = plan.source["validation"]
    return {d: plan.score(model, select_domains(validation, [d])) for d in plan.sources}


class SourceStages:
    """``SourceStage`` of several plans (runs that differ only in their seed), the fits
    together (``fit_all``): one source model per plan. Each fit is stored in
    ``source_cache``; with ``reuse``, a model stored by an earlier command with the same
    inputs is read instead of trained."""

    def __init__(self, plans: list[TransferPlan], reuse: bool = False) -> None:
        self.plans, self.reuse = plans, reuse
        self.stages = [SourceStage(p) for p in plans]

    def run(self) -> tuple[list[MultimodalModel], str]:
        """The trained source models, and how their fits ran; sets each plan's metric."""
        first = self.plans[0]
        rows = lambda: fitting_rows(first.source["train"], first.spec)  # noqa: E731  (if needed)
        models = [
            build_model(p.run.model.to_dict(), rows, seed=p.seed, encoders=p.pool)
            for p in self.plans
        ]
        configs = [s.train_config() for s in self.stages]
        keys = self._keys(models, configs)
        stored = [source_cache.load(k, m) if self.reuse and k else None
                  for k, m in zip(keys, models, strict=True)]  # fmt: skip
        todo = [i for i, entry in enumerate(stored) if entry is None]
        mode = self._fit(todo, models, configs, keys)
        for plan, entry in zip(self.plans, stored, strict=True):
            if entry is not None:
                plan.metric, plan.source_privacy = entry["metric"], None
                plan.source_fit = {**entry, "reused": True}
        for plan, model in zip(self.plans, models, strict=True):
            if len(plan.sources) > 1 and not Split(plan.source["validation"]).streamed:
                plan.source_fit["validation_per_domain"] = per_domain(plan, model)
        if len(todo) < len(models):
            mode = f"reused {len(models) - len(todo)} of {len(models)} (source_cache)" + (
                f"; the rest {mode}" if todo else "")  # fmt: skip
        return models, mode

    def _keys(self, models: list[MultimodalModel], configs: list[TrainConfig]) -> list[str | None]:
        """Each fit's ``source_cache`` key, None where it is not stored."""
        plans = self.plans
        if not all(source_cache.storable(p, c) for p, c in zip(plans, configs, strict=True)):
            return [None] * len(plans)
        files = scratch_cache.data_fingerprints(plans[0].spec)  # read once for the group
        return [source_cache.source_key(p, m, c, files)
                for p, m, c in zip(plans, models, configs, strict=True)]  # fmt: skip

    def _fit(self, todo: list[int], models: list[MultimodalModel], configs: list[TrainConfig],
             keys: list[str | None]) -> str:  # fmt: skip
        """Train the models at ``todo`` (``fit_all``), set their plans' metrics, store the fits."""
        if not todo:
            return "no fit"
        plans, models, configs = ([xs[i] for i in todo] for xs in (self.plans, models, configs))
        oracles = [
            TargetOracle(p, m, c.metric or m.head.task.default_metric)
            if p.run.transfer.protocol == "leave_one_out" else None
            for p, m, c in zip(plans, models, configs, strict=True)
        ]  # fmt: skip
        fits = fit_all(plans[0], models, [self.stages[i].data() for i in todo], configs, "source",
                       [[o] if o is not None else [] for o in oracles])  # fmt: skip
        for plan, result, oracle, model, i in zip(plans, fits.results, oracles, models, todo,
                                                  strict=True):  # fmt: skip
            plan.metric, plan.source_privacy = result.metric, result.privacy
            plan.source_fit = fit_summary(result)
            plan.oracle = oracle.scores() if oracle is not None else {}
            if keys[i] is not None:
                source_cache.store(keys[i], model, {**plan.source_fit, "metric": result.metric})
        return fits.mode


class ScratchEpisodes:
    """``ScratchStage`` on every episode of one target for each plan (runs that differ only
    in their seed), the fits together (``fit_all``)."""

    def __init__(self, plans: list[TransferPlan], target: str, reuse: bool = False) -> None:
        self.plans, self.target, self.reuse = plans, target, reuse
        self.stages = [ScratchStage(p, target, e) for p in plans for e in p.episodes[target]]

    def run(self) -> tuple[list[list[float]], str]:
        """Each plan's scratch score per episode on the target's test split, and how the
        fits ran. With ``reuse``, scores stored by an earlier command with the same inputs
        are read (``scratch_cache``) and only the others are trained."""
        from . import scratch_cache

        configs = [s.train_config() for s in self.stages]
        keys: list[str | None] = [None] * len(self.stages)
        if self.reuse:  # the data's files read once for the group, each plan's inputs once
            files = scratch_cache.data_fingerprints(self.plans[0].spec)
            inputs = {id(p): scratch_cache.plan_inputs(p, files) for p in self.plans}
            keys = [scratch_cache.scratch_key(inputs[id(s.plan)], self.target, s.episode, c)
                    for s, c in zip(self.stages, configs, strict=True)]  # fmt: skip
        scores: list[float | None] = [scratch_cache.load(k) for k in keys]
        todo = [i for i, s in enumerate(scores) if s is None]
        for stage, score in zip(self.stages, scores, strict=True):
            if score is not None and stage.episode.rows is not None:
                stage.plan.progress.skip(scratch_overrides(stage.plan.run), len(stage.episode.rows))
        mode = f"reused {len(scores) - len(todo)} of {len(scores)} (scratch_cache)"
        if todo:
            stages = [self.stages[i] for i in todo]
            models = [s.initial_model(share_encoders=configs[i].strategy == "head")
                      for i, s in zip(todo, stages, strict=True)]  # fmt: skip
            fits = fit_all(self.plans[0], models, [s.data() for s in stages],
                           [configs[i] for i in todo], "scratch")  # fmt: skip
            test = self.plans[0].target[self.target]["test"]
            for i, score in zip(todo, self.plans[0].scores(models, test, shares_encoders(*models)),
                                strict=True):  # fmt: skip
                scores[i] = score
                scratch_cache.store(keys[i], score, {"target": self.target,
                                                     "episode": self.stages[i].episode.index})  # fmt: skip
            mode = fits.mode if len(todo) == len(scores) else f"{fits.mode}; {mode}"
        return per_plan(self.plans, scores, self.target), mode


class AdaptEpisodes:
    """``AdaptStage`` of one arm on every episode of one target for each plan and its source
    model, the fits together (``fit_all``); for arms that train with ``fit`` on each
    episode's rows."""

    def __init__(self, plans: list[TransferPlan], arm: Adaptation, models: list[MultimodalModel],
                 target: str) -> None:  # fmt: skip
        self.plans, self.arm, self.target = plans, arm, target
        self.stages = [AdaptStage(p, arm, m, target, e)
                       for p, m in zip(plans, models, strict=True) for e in p.episodes[target]]  # fmt: skip

    def run(self) -> tuple[list[MultimodalModel], list[int], str]:
        """The adapted models and the target rows each trained on (plan by plan, episode by
        episode), and how the fits ran."""
        models, configs, datas, used = (
            list(x) for x in zip(*(s.prepare() for s in self.stages), strict=True)
        )
        fits = fit_all(self.plans[0], models, datas, configs, f"adapt {self.arm.name}")
        return models, used, fits.mode
