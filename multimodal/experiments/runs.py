"""Training runs from a run config, recorded so they can be reproduced and compared."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.io import write_json_atomic
from ..core.provenance import git_state
from ..core.run_folder import RunFolder

RUN_CONFIG_NAME = RunFolder.run_config
RESULTS_NAME = RunFolder.results
TRAINED_ON = "trained_domains"  # run_config.json: the domains the model saw in training
CLASS_NAMES = "class_names"  # run_config.json: class id -> name, when the data name them
logger = logging.getLogger(__name__)


def provenance(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config hash and the versions of code and data behind a run, where known."""
    from ..core.config import config_hash
    from ..core.provenance import environment

    data = dict(config.get("data") or {})
    path = data.get("path", "synthetic")
    if path == "synthetic":
        data_state: dict[str, Any] = {"source": "synthetic", "options": data.get("options", {})}
    elif Path(path).exists():
        data_state = {"source": "local", "path": str(Path(path).resolve()), "git": git_state(path)}
    else:
        data_state = {"source": "hub", "id": path, "revision": data.get("revision")}
    return {
        "config_hash": config_hash(config),
        "code": git_state(Path(__file__).resolve().parent),
        "data": data_state,
        "environment": environment(),
    }


def training_domains(run: Any, train: Any, all_domains: bool = False) -> list[str] | None:
    """The domains ``train`` trains on: a config with a ``transfer`` section trains on its
    source domains (``transfer.source``, else the first domain, as the transfer protocol
    picks them), so that its targets stay unseen; None (every domain) otherwise, or with
    ``all_domains``."""
    from .transfer import source_and_targets

    if all_domains or "transfer" not in run.raw:
        return None
    try:
        return source_and_targets(train, run.transfer)[0]
    except ValueError:  # one domain only: it is the source, and every domain
        return None


def _warn_one_class(rows: list[dict[str, Any]], head: dict[str, Any]) -> None:
    """A classifier trained on one class learns nothing and scores 1.0 on such data: say so."""
    if head.get("task", "classification") != "classification":
        return
    labels = {r.get("label") for r in rows} - {None}
    if len(labels) == 1:
        logger.warning("warning: every training row has the label %r: the classifier learns "
                       "nothing, and its accuracy on such data means nothing; check data.label "
                       "and the domains it trains on", next(iter(labels)))  # fmt: skip


def train_run(
    config: Mapping[str, Any] | Any, output_dir: str | Path, resume_from: str | None = None,
    all_domains: bool = False, overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Build, train and test the model of a run config; the run folder records the config
    (``run_config.json``, with its hash, provenance and the domains trained on) and
    ``results.json``. With a ``transfer`` section, training and the test see only the source
    domains (``training_domains``) unless ``all_domains``. A folder that holds a run is
    refused unless ``resume_from`` resumes it or ``overwrite`` replaces it, and no second
    process may write to it meanwhile (``RunFolder.claim``, ``RunFolder.locked``)."""
    from .config import RunConfig

    run = RunConfig.from_dict(config)  # a bad config is told before the folder is touched
    folder = RunFolder(Path(output_dir))
    with folder.locked():
        folder.claim(resume_from is not None, overwrite)
        return _train_run(run, Path(output_dir), resume_from, all_domains)


def _train_run(run: Any, out: Path, resume_from: str | None, all_domains: bool) -> dict[str, Any]:
    from ..data.collate import RowView
    from ..data.loading import load_dataset, select_domains
    from ..data.split import Split
    from ..engine import FitData, evaluate, fit
    from ..modeling.model import build_model

    start = time.perf_counter()
    config = run.to_dict()
    spec = run.data
    dsd = load_dataset(spec)
    sources = training_domains(run, dsd["train"], all_domains)
    if sources is not None:
        logger.warning("training on the source domains %s (transfer.source); the other domains "
                       "stay unseen (--all-domains trains on every domain)", sources)  # fmt: skip
        dsd = {name: select_domains(split, sources) for name, split in dsd.items()}
    train_domains = sources or Split(dsd["train"]).domains()
    record = {"config": config, TRAINED_ON: train_domains, "all_domains": sources is None,
              CLASS_NAMES: class_names(spec, dsd["train"])}  # fmt: skip
    write_json_atomic(out / RUN_CONFIG_NAME, {**record, **provenance(config)})
    view = RowView(dsd["train"], spec, "train")
    rows = [view[i] for i in range(len(view))]
    _warn_one_class(rows, run.model.head)
    model = build_model(run.model.to_dict(), rows, seed=int(run.seed or 0))
    cfg = run.stage(output_dir=str(out), resume_from=resume_from)
    result = fit(model, FitData(spec, dsd["train"], dsd.get("validation")), cfg)
    test = (
        evaluate(model, dsd["test"], spec, cfg.eval_batch_size or cfg.nominal_batch_size)
        if "test" in dsd
        else {}
    )
    summary = {
        "validation_" + result.metric: result.best_metric, "best_step": result.best_step,
        "steps": result.steps, "skipped_steps": result.skipped_steps, "test": test,
        "metric": model.head.task.default_metric,
        "trained_domains": train_domains,
        "history": result.history, "wall_time_s": time.perf_counter() - start, "run_dir": str(out),
    }  # fmt: skip
    if result.privacy is not None:  # train.dp: the budget spent, from Opacus's accountant
        summary["privacy"] = result.privacy
    write_json_atomic(out / RESULTS_NAME, summary)
    if test and RunFolder(out).has_best_model:
        from ..modeling.card import DomainResult, update_card

        value = test[summary["metric"]]
        update_card(RunFolder(out).best_model, spec=config.get("data"), trained_on=train_domains,
                    results=[DomainResult("+".join(train_domains), "source test", summary["metric"], value)])  # fmt: skip
    return summary


def _flatten(results: Mapping[str, Any]) -> dict[str, float]:
    """The comparable numbers of a results.json: validation and test metrics, step counts and
    every evaluation in the history."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if key.startswith("validation_") or key in ("best_step", "steps", "skipped_steps"):
            if value is not None:
                flat[key] = float(value)
    for key, value in (results.get("test") or {}).items():
        flat[f"test_{key}"] = float(value)
    for record in results.get("history") or []:
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                flat[f"step_{record['step']}_{key}"] = float(value)
    return flat


def diff_results(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per number in either results: both values and their absolute difference."""
    fa, fb = _flatten(a), _flatten(b)
    rows = []
    for key in sorted(set(fa) | set(fb), key=lambda k: (k.startswith("step_"), k)):
        x, y = fa.get(key), fb.get(key)
        diff = abs(x - y) if x is not None and y is not None else math.inf
        rows.append({"key": key, "original": x, "reproduced": y, "abs_diff": diff})
    return rows


def reproduce(run_dir: str | Path, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-run a finished run from its recorded config and diff the metrics.

    Returns {"rows": diff rows, "max_abs_diff", "environment_changes": {package: (old, new)},
    "config_hash", "output_dir"}.
    """
    run_dir = Path(run_dir)
    recorded_path, results_path = run_dir / RUN_CONFIG_NAME, run_dir / RESULTS_NAME
    if not recorded_path.is_file() or not results_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a finished run: it needs {RUN_CONFIG_NAME} and {RESULTS_NAME} "
            "(runs made with `multimodal train` have both)"
        )
    recorded = json.loads(recorded_path.read_text())
    original = json.loads(results_path.read_text())
    out = Path(output_dir) if output_dir else run_dir / "reproduce"
    if out.resolve() == run_dir.resolve():
        raise ValueError("the reproduction must go to another folder than the run it checks")
    with contextlib.suppress(FileNotFoundError):
        if any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty; pass another --output-dir")
    config = {k: v for k, v in recorded["config"].items() if k != "output_dir"}
    # Runs recorded before training kept to the source domains trained on every domain.
    reproduced = train_run(config, out, all_domains=bool(recorded.get("all_domains", True)))
    rows = diff_results(original, reproduced)
    now = provenance(config)
    old_packages = (recorded.get("environment") or {}).get("packages", {})
    changes = {
        name: (old_packages.get(name), version)
        for name, version in now["environment"]["packages"].items()
        if old_packages.get(name) != version
    }
    result = {
        "rows": rows, "max_abs_diff": max((r["abs_diff"] for r in rows), default=0.0),
        "environment_changes": changes, "config_hash": recorded.get("config_hash"),
        "code_then": recorded.get("code"), "code_now": now["code"], "output_dir": str(out),
    }  # fmt: skip
    write_json_atomic(out / "reproduction.json", result)
    return result


def class_names(spec: Any, train: Any) -> list[str] | None:
    """The class names of a classification dataset: ``label_names``, else the names of a
    ClassLabel label column; None when the data do not name their classes."""
    import datasets

    if spec.label_names:
        return [str(n) for n in spec.label_names]
    feature = (train.features or {}).get(spec.label)
    return [str(n) for n in feature.names] if isinstance(feature, datasets.ClassLabel) else None


def run_record(model_dir: str | Path) -> dict[str, Any]:
    """The ``run_config.json`` of a saved model's run folder (the folder itself, or the
    parent of its ``best_model/``); empty when there is none."""
    for folder in (Path(model_dir), Path(model_dir).parent):
        path = folder / RUN_CONFIG_NAME
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def trained_domains(model_dir: str | Path) -> list[str] | None:
    """The domains a saved model trained on, as its run folder records them, or None."""
    return run_record(model_dir).get(TRAINED_ON)


def recorded_class_names(model_dir: str | Path) -> list[str] | None:
    """The class names a saved model's run recorded (``label_names`` or ClassLabel), or None."""
    record = run_record(model_dir)
    names = record.get(CLASS_NAMES) or ((record.get("config") or {}).get("data") or {}).get(
        "label_names"
    )
    return [str(n) for n in names] if names else None


def format_diff(result: Mapping[str, Any], limit: int = 20) -> str:
    rows = result["rows"]
    lines = [f"{'metric':<36} {'original':>12} {'reproduced':>12} {'|diff|':>10}", "-" * 73]
    shown = [r for r in rows if not r["key"].startswith("step_")][:limit]
    for r in shown:
        fmt = lambda v: "—" if v is None else f"{v:.6g}"  # noqa: E731
        lines.append(
            f"{r['key']:<36} {fmt(r['original']):>12} {fmt(r['reproduced']):>12} {r['abs_diff']:>10.3g}"
        )
    history = [r for r in rows if r["key"].startswith("step_")]
    if history:
        worst = max(r["abs_diff"] for r in history)
        lines.append(
            f"{len(history)} numbers in the evaluation history; largest |diff| {worst:.3g}"
        )
    lines.append(f"max |diff| {result['max_abs_diff']:.3g} over {len(rows)} numbers")
    for name, (old, new) in result["environment_changes"].items():
        lines.append(f"note: {name} was {old}, is now {new}")
    return "\n".join(lines)
