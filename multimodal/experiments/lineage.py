"""Re-adaptation of a saved model to newly collected data, as a chain of versions.

``readapt`` writes a new run folder that links to its parent, holds the adapted model and a
comparison of old and new on the new data's held-out split and on the reference test split
(forgetting). Nothing in the parent is touched. ``history`` walks the chain back to the root.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..core.io import write_json_atomic
from ..core.run_folder import RunFolder
from ..data.loading import k_shot, load_dataset, select_domains, split_of
from ..data.spec import DatasetSpec
from ..data.split import Split
from ..engine import FitData, TrainConfig, evaluate, fit
from ..modeling.model import MultimodalModel
from ..modeling.tasks import headline_metric
from .runs import TRAINED_ON

logger = logging.getLogger(__name__)

LINEAGE_NAME = RunFolder.lineage
COMPARISON_NAME = RunFolder.comparison


def _parent_split(
    run: Path, split: str, domains: Sequence[str] | None = None
) -> tuple[DatasetSpec, datasets.Dataset] | None:
    """The data the parent was trained or adapted on: its spec and ``split``, of the domains
    it trained on or of ``domains`` (None when the folder records neither a lineage nor a
    run config). A version's training rows are its k-shot draw, redrawn from its record."""
    lineage = run / LINEAGE_NAME
    if lineage.is_file():
        record = json.loads(lineage.read_text())
        spec = DatasetSpec.from_dict(record["data"])
        rows = _split(spec, split, domains or record.get("domains"))
        if split == "train" and record.get("budget") and not domains:
            rows = k_shot(rows, record["budget"], record["train"]["seed"], spec.label)
        return spec, rows
    recorded = RunFolder(run).run_config
    if recorded.is_file():
        record = json.loads(recorded.read_text())
        spec = DatasetSpec.from_dict(record["config"].get("data") or {})
        # A run trained on transfer.source leaves the other domains unseen: they are not its data.
        return spec, _split(spec, split, domains or record.get(TRAINED_ON))
    return None


def parent_reference(
    run: str | Path, domains: Sequence[str] | None = None
) -> tuple[DatasetSpec, datasets.Dataset] | None:
    """What forgetting is measured on by default: the parent's data, the test split of the
    domains it trained on (or of ``domains``)."""
    return _parent_split(Path(run), "test", domains)


def rehearsal_mix(
    new_train: datasets.Dataset, parent: Path, rows: int, seed: int
) -> datasets.Dataset:
    """``new_train`` with a seeded sample of ``rows`` of the parent's training rows mixed in
    (``datasets.interleave_datasets``, each row once, in proportion to the two sizes)."""
    found = _parent_split(parent, "train")
    if found is None:
        raise FileNotFoundError(f"{parent}: no {LINEAGE_NAME} or run_config.json, so its training rows are "
                                "unknown and rehearsal cannot draw from them")  # fmt: skip
    needs = "rehearsal (it draws from the rows the parent trained on)"
    old = Split(found[1]).require_held(needs)
    Split(new_train).require_held(needs)
    if rows > len(old):
        logger.warning("rehearsal: %s trained on %d rows; all of them are mixed in, not %d",
                       parent, len(old), rows)  # fmt: skip
    sample = old.shuffle(seed=seed).select(range(min(rows, len(old))))
    missing = sorted(set(new_train.column_names) - set(sample.column_names))
    if missing:
        raise ValueError(
            f"rehearsal: the parent's training rows lack the new data's columns {missing}"
        )
    sample = sample.select_columns(new_train.column_names).cast(new_train.features)
    total = len(new_train) + len(sample)
    return datasets.interleave_datasets(
        [new_train, sample], probabilities=[len(new_train) / total, len(sample) / total], seed=seed,
        stopping_strategy="all_exhausted_without_replacement",
    )  # fmt: skip


def _split(spec: DatasetSpec, split: str, domains: Sequence[str] | None) -> datasets.Dataset:
    ds = split_of(load_dataset(spec), split)
    return select_domains(ds, list(domains)) if domains else ds


def readapt(
    parent: str | Path,
    data: DatasetSpec | Mapping[str, Any],
    out: str | Path,
    strategy: str = "head",
    budget: int | None = None,
    domains: Sequence[str] | None = None,
    train: Mapping[str, Any] | None = None,
    reference: tuple[DatasetSpec, datasets.Dataset] | None = None,
    seed: int = 0,
    rehearsal: int = 0,
    tta: str | None = None,
) -> dict[str, Any]:
    """Adapt the parent's model to ``data`` (its train split, or ``budget`` labelled rows per
    class of it), validate on its validation split and compare old and new. ``rehearsal``:
    that many of the parent's training rows (a seeded sample) are mixed into the new ones.
    ``tta`` (tent, bn_adapt): adapt without labels on the new train split instead, as after
    ``drift`` flags a shift that nobody has labelled yet.

    Returns the comparison: old and new metrics on the new data's test split and on the
    reference test split, and the forgetting (reference metric, old minus new).
    """
    parent, out = Path(parent), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: a new version never overwrites")
    if out.resolve() == parent.resolve():
        raise ValueError("the new version needs its own folder")
    spec = data if isinstance(data, DatasetSpec) else DatasetSpec.from_dict(data)
    dsd = load_dataset(spec)
    splits = {k: select_domains(v, list(domains)) if domains else v for k, v in dsd.items()}
    new_train = k_shot(splits["train"], budget, seed, spec.label) if budget else splits["train"]
    rehearsed = 0
    if rehearsal:
        mixed = rehearsal_mix(new_train, parent, rehearsal, seed)
        rehearsed, new_train = len(mixed) - len(new_train), mixed
    old = MultimodalModel.from_pretrained(parent)
    new = MultimodalModel.from_pretrained(parent)
    config = {"epochs": 20, "lr": 1e-3, "batch_size": 16, "progress": False, **(train or {}),
              "strategy": strategy, "output_dir": str(out), "seed": seed}  # fmt: skip
    if tta:
        config["lr"] = (train or {}).get("lr", 1e-3)
        metric = _test_time(new, tta, FitData(spec, new_train, unlabelled=splits["train"]),
                            TrainConfig.from_dict(config), out)  # fmt: skip
        strategy = tta
    else:
        fitted = fit(
            new, FitData(spec, new_train, splits.get("validation")), TrainConfig.from_dict(config)
        )
        metric = fitted.metric
    reference = reference or parent_reference(parent)
    comparison: dict[str, Any] = {"metric": metric, "new_data": {}, "reference": None}
    test = splits["test"]
    comparison["new_data"] = {"old": evaluate(old, test, spec), "new": evaluate(new, test, spec)}
    if reference is not None:
        ref_spec, ref_test = reference
        before, after = evaluate(old, ref_test, ref_spec), evaluate(new, ref_test, ref_spec)
        comparison["reference"] = {
            # A stream is not read again to name them.
            "domains": None if Split(ref_test).streamed else Split(ref_test).domains(),
            "old": before,
            "new": after,
            "forgetting": before[metric] - after[metric],
        }
    comparison["gain"] = (
        comparison["new_data"]["new"][metric] - comparison["new_data"]["old"][metric]
    )
    parent_record = (
        json.loads((parent / LINEAGE_NAME).read_text()) if (parent / LINEAGE_NAME).is_file() else {}
    )
    write_json_atomic(out / LINEAGE_NAME, {
        "parent": str(parent.resolve()), "version": int(parent_record.get("version", 1)) + 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "strategy": strategy, "budget": budget, "train_rows": len(new_train), "rehearsal_rows": rehearsed,
        "domains": list(domains or []),
        "data": {k: v for k, v in spec.__dict__.items()}, "train": config,
    })  # fmt: skip
    write_json_atomic(out / COMPARISON_NAME, comparison)
    (out / RunFolder.comparison_md).write_text(comparison_markdown(comparison))
    _update_card(out, spec, domains, comparison)
    return comparison


def _update_card(
    out: Path, spec: Any, domains: Sequence[str] | None, comparison: Mapping[str, Any]
) -> None:
    """The new version's model card: its data and its results on the new data's test split
    and, with a reference split, its forgetting there."""
    from ..modeling.card import DomainResult, update_card

    metric, new = comparison["metric"], "+".join(domains or []) or "new data"
    results = [DomainResult(new, "readapted", metric, comparison["new_data"]["new"][metric])]
    if comparison["reference"] is not None:
        results.append(
            DomainResult(
                "reference", "forgetting", f"{metric}_drop", comparison["reference"]["forgetting"]
            )
        )
    if RunFolder(out).has_best_model:
        update_card(RunFolder(out).best_model, spec=dict(spec.__dict__), trained_on=list(domains or []),
                    results=results)  # fmt: skip


def _test_time(
    model: MultimodalModel, method: str, data: FitData, cfg: TrainConfig, out: Path
) -> str:
    """``model`` adapted by the test-time arm ``method`` and saved as ``out/best_model``;
    the metric its comparison reports."""
    from .adaptations import create_adaptation

    create_adaptation(method).train(model, data, cfg)
    model.save_pretrained(RunFolder(out).best_model)
    return cfg.metric or model.head.task.default_metric


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    metric = comparison["metric"]
    lines = [f"| data | old {metric} | new {metric} | change |", "|---|---|---|---|"]
    old, new = comparison["new_data"]["old"][metric], comparison["new_data"]["new"][metric]
    lines.append(f"| new data (test) | {old:.4f} | {new:.4f} | {new - old:+.4f} |")
    if comparison.get("reference"):
        ref = comparison["reference"]
        a, b = ref["old"][metric], ref["new"][metric]
        where = f"test: {', '.join(ref['domains'])}" if ref.get("domains") else "test"
        lines.append(
            f"| reference ({where}) | {a:.4f} | {b:.4f} | {b - a:+.4f} (forgetting {ref['forgetting']:+.4f}) |"
        )
    return "\n".join(lines) + "\n"


def history(run: str | Path) -> list[dict[str, Any]]:
    """The chain of versions from the root to ``run``: folder, version, strategy, metrics."""
    chain = []
    current: Path | None = Path(run).resolve()
    seen = set()
    while current is not None and current not in seen:
        seen.add(current)
        entry: dict[str, Any] = {"run": str(current), "version": 1}
        lineage = current / LINEAGE_NAME
        if lineage.is_file():
            record = json.loads(lineage.read_text())
            entry.update(version=record["version"], strategy=record["strategy"], created=record["created"],
                         train_rows=record["train_rows"])  # fmt: skip
            comparison = json.loads((current / COMPARISON_NAME).read_text())
            metric = comparison["metric"]
            entry["new_data"] = comparison["new_data"]["new"][metric]
            entry["previous_on_new_data"] = comparison["new_data"]["old"][metric]
            if comparison.get("reference"):
                entry["reference"] = comparison["reference"]["new"][metric]
                entry["forgetting"] = comparison["reference"]["forgetting"]
            parent = Path(record["parent"])
            current = parent if parent.exists() else None
            if current is None:
                chain.append(entry)
                chain.append(
                    {"run": record["parent"], "version": record["version"] - 1, "missing": True}
                )
                break
        else:
            results = RunFolder(current).results
            if results.is_file():
                data = json.loads(results.read_text())
                entry["test"] = data.get("test")
                entry["metric"] = data.get("metric")
            current = None
        chain.append(entry)
    return list(reversed(chain))


def format_history(chain: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for e in chain:
        if e.get("missing"):
            lines.append(f"v{e['version']}  {e['run']}  (folder missing)")
            continue
        if e["version"] == 1 or "strategy" not in e:
            test = e.get("test") or {}
            # results.json names its metric; one written before it did: accuracy, else rmse
            key = e.get("metric") or headline_metric(test)
            main = f"{key} {test[key]:.4f}" if key in test else ""
            lines.append(f"v{e['version']}  {e['run']}  trained; test {main}".rstrip())
            continue
        text = (f"v{e['version']}  {e['run']}  {e['strategy']} on {e['train_rows']} rows ({e['created']}); "
                f"new data {e['previous_on_new_data']:.4f} -> {e['new_data']:.4f}")  # fmt: skip
        if "reference" in e:
            text += f"; reference {e['reference']:.4f} (forgetting {e['forgetting']:+.4f})"
        lines.append(text)
    return "\n".join(lines)
