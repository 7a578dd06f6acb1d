"""The stages of the transfer protocol, each an object that gives its train config and its
data: source training, zero-shot evaluation, an adaptation arm on one episode, and the
scratch baseline on the same episode."""

from __future__ import annotations

import copy
from typing import Any

import datasets

from ...core.run_folder import RunFolder
from ...data.split import Split
from ...engine import FitData, TrainConfig, fit
from ...modeling.freezing import frozen_encoders
from ...modeling.model import MultimodalModel, build_model
from ..adaptations import UNBALANCED, Adaptation, AdaptContext
from .plan import Episode, TransferPlan, fit_summary, fitting_rows

SCRATCH_DEFAULTS: dict[str, Any] = {
    "strategy": "full",
    "epochs": 20,
    "patience": None,
    **UNBALANCED,
}


def shares_encoders(model: MultimodalModel) -> bool:
    """Whether ``model`` trained with every encoder frozen: its encoder outputs are those of
    the model it started from, worth keeping in the feature store for the next stage."""
    return len(frozen_encoders(model)) == len(model.encoders)


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
        rows = fitting_rows(plan.source["train"], plan.spec)
        model = build_model(plan.run.model.to_dict(), rows, seed=plan.seed)
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

    def run(self) -> tuple[MultimodalModel, int]:
        """The adapted model and how many target rows it trained on."""
        cfg = self.train_config()
        # Encoders that stay frozen are shared with the source model, not copied.
        shared = {id(self.model.encoders): self.model.encoders} if cfg.strategy == "head" else {}
        adapted: MultimodalModel = copy.deepcopy(self.model, shared)
        data, used = self.data()
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
        if plan.scratch_template is None:
            template = build_model(plan.run.model.to_dict(), seed=plan.seed)
            fits = any(e.fits_on_data() for e in template.encoders.values())
            plan.scratch_template = False if fits else template
        if plan.scratch_template is False:
            rows = fitting_rows(self.episode.dataset(plan.target[self.target]["train"]), plan.spec)
            return build_model(plan.run.model.to_dict(), rows, seed=plan.seed)
        template = plan.scratch_template
        shared = {id(template.encoders): template.encoders} if share_encoders else {}
        return copy.deepcopy(template, shared)

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
