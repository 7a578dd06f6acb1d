"""Cross-domain benchmarks: suites of transfer runs over fusions, adaptations and seeds,
summarised as mean and 95% CI with paired comparisons, as CSV, JSON, Markdown and PNG."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import check_keys, config_hash, read_yaml
from ..core.io import write_json_atomic
from .config import validate
from .distributed import Executor, SequentialExecutor
from .stats import mean_ci, paired_comparison  # noqa: F401  (re-exported)
from .summary import (  # noqa: F401  (summarize, ROW_KEYS re-exported)
    EXTRA_METRICS,
    METRICS,
    ONLY,
    ROW_KEYS,
    UTIL,
    comparisons,
    summarize,
    unimodal,
)
from .summary import STAT_KEYS as _STAT_KEYS

logger = logging.getLogger(__name__)
# Columns of robustness rows that are not grid axes (with "seed" per run, "seeds" summarised).
ROBUSTNESS_KEYS = {
    "k_shot",
    "fusion",
    "model",
    "domain",
    "dropped",
    "metric",
    "value",
    "loss",
    "relative",
}
SUITE_KEYS = {
    "name",
    "description",
    "requires_hub",
    "base",
    "fusions",
    "fusion_kwargs",
    "adaptations",
    "strategies",  # the former name of adaptations
    "seeds",
    "pairs",
    "k_shot",
    "grid",
    "encoders",
    "unimodal",
    "builder",
}


@dataclass
class Suite:
    """A benchmark suite: a base run config and the axes to sweep.

    base: a run config (data, encoders, fusion, head, train, transfer); adaptations: the
    transfer arms to compare, each a freezing strategy fine-tuned on the k-shot target
    sample (head, top_k, full, lora), a UDA method (dann, ...) or source_only; pairs: source ->
    target domain lists; k_shot: sizes; grid: keys -> values to cross, where a plain key is a
    ``data.options`` key and a dotted one a config path (``train.modality_dropout``);
    encoders: named encoder sets crossed as a grid axis ``encoders`` (each replaces the
    base's entries for the modalities it names: pretrained against random-init weights,
    say); unimodal: also run each modality alone under the same protocol (``image-only``);
    builder: a script in ``benchmarks/`` whose ``build(path)`` writes ``base.data.path``
    when that local folder does not exist yet.
    """

    name: str
    base: dict[str, Any]
    fusions: list[str]
    adaptations: list[str] = field(default_factory=lambda: ["head", "full"])
    seeds: int = 3
    pairs: list[dict[str, list[str]]] = field(default_factory=list)
    k_shot: list[int] = field(default_factory=lambda: [5])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fusion_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    requires_hub: bool = False
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    unimodal: bool = True
    builder: str | None = None

    def modalities(self) -> list[str]:
        return sorted(self.base.get("encoders") or {})


def load_suite(path: str | Path) -> Suite:
    data = read_yaml(path)
    check_keys(data, SUITE_KEYS, "suite")
    if "strategies" in data:
        logger.warning("suite %s: 'strategies' is now 'adaptations'", path)
        data.setdefault("adaptations", data.pop("strategies"))
    suite = Suite(**data)
    validate(suite.base)
    return suite


@dataclass(frozen=True)
class Unit:
    """One transfer run: its adaptations share the source model and the scratch baseline."""

    fusion: str
    seed: int
    pair: int
    k_shot: int
    grid: tuple[tuple[str, Any], ...]


def plan(suite: Suite, fusions: Sequence[str], seeds: int) -> list[Unit]:
    """Every unit: grid point x pair x k x fusion (then each modality alone) x seed."""
    pairs = range(max(len(suite.pairs), 1))
    axes = {**suite.grid, **({"encoders": list(suite.encoders)} if suite.encoders else {})}
    grid_keys = sorted(axes)
    grid_points = [
        tuple(zip(grid_keys, values, strict=True))
        for values in itertools.product(*(axes[k] for k in grid_keys))
    ]
    arms = list(fusions)
    if suite.unimodal and len(suite.modalities()) > 1:
        arms += [f"{m}{ONLY}" for m in suite.modalities()]
    return [
        Unit(fusion, seed, pair, k, point)
        for point in grid_points
        for pair in pairs
        for k in suite.k_shot
        for fusion in arms
        for seed in range(seeds)
    ]


def unit_config(suite: Suite, unit: Unit) -> dict[str, Any]:
    config = copy.deepcopy(suite.base)
    only = unimodal(unit.fusion)
    fusion_name = "concat" if only else unit.fusion
    config["fusion"] = {
        **(config.get("fusion") or {}),
        "name": fusion_name,
        **suite.fusion_kwargs.get(fusion_name, {}),
    }
    config["seed"] = unit.seed
    transfer = config.setdefault("transfer", {})
    transfer["k_shot"] = unit.k_shot
    if suite.pairs:
        transfer["source"] = list(suite.pairs[unit.pair]["source"])
        transfer["target"] = list(suite.pairs[unit.pair]["target"])
    options = config.setdefault("data", {}).setdefault("options", {})
    for key, value in unit.grid:
        if key == "encoders":
            config["encoders"] = {
                **config.get("encoders", {}),
                **copy.deepcopy(suite.encoders[value]),
            }
            continue
        *sections, leaf = key.split(".")
        node = config if sections else options
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    if only:
        _keep_modality(config, only)
    config.pop("output_dir", None)
    return config


def _keep_modality(config: dict[str, Any], modality: str) -> None:
    """Reduce a run config to one modality: its encoder, its column; no drop-one tables."""
    config["encoders"] = {modality: config["encoders"][modality]}
    columns = config["data"].get("columns")
    if columns:
        config["data"]["columns"] = {modality: columns[modality]}
    elif config["data"].get("path") == "synthetic":  # the same data, one column read
        from ..data.synthetic import synthetic_columns

        config["data"]["columns"] = synthetic_columns([modality])
    config["transfer"]["robustness"] = False
    config["transfer"]["imbalance"] = False  # needs two modalities
    train = config.get("train") or {}
    if train.get("modality_dropout"):
        train["modality_dropout"] = 0.0  # dropping the only modality leaves nothing to learn
    if train.get("balance", "none") != "none":  # one modality has nothing to balance
        train["balance"] = "none"
        train.pop("balance_kwargs", None)
        train.pop("balance_strength", None)


def run_unit_reports(config: dict[str, Any], adaptations: list[str]) -> dict[str, Any]:
    """One unit: the transfer protocol with each adaptation, as report dicts."""
    from .transfer import transfer_adaptations

    return {s: r.to_dict() for s, r in transfer_adaptations(config, adaptations).items()}


def run_benchmark(
    suite: Suite,
    out: str | Path,
    fusions: Sequence[str] | None = None,
    adaptations: Sequence[str] | None = None,
    seeds: int | None = None,
    progress: bool = True,
    run_unit: Callable[[dict[str, Any], list[str]], dict[str, Any]] | None = None,
    robustness: list[dict[str, Any]] | None = None,
    executor: Executor | None = None,
    trackers: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Run every unit not already in ``out/runs`` and return the rows of all planned units.

    With ``robustness`` (a list), each unit's missing-modality rows are appended to it; the
    suite's base config needs ``transfer.robustness: true`` for the reports to hold them.
    ``executor`` decides where units run (default: one after another in this process;
    ``RayExecutor`` spreads them over Ray workers); rows come back in plan order either way.
    ``trackers`` (accelerate tracker names) get one run per finished unit.

    A unit is stored as ``out/runs/<hash>.json`` once it finishes, so an interrupted
    benchmark resumes where it stopped and a finished one only rewrites its summary.
    """
    from tqdm.auto import tqdm

    from ..core.provenance import environment

    out = Path(out)
    adaptations = list(adaptations or suite.adaptations)
    units = plan(suite, list(fusions or suite.fusions), seeds or suite.seeds)
    executor = executor or SequentialExecutor()
    machine = environment()
    stored: dict[int, Mapping[str, Any]] = {}
    todo: list[tuple[int, dict[str, Any], Path, dict[str, Any]]] = []
    # Units whose configs coincide (a one-modality baseline under every balancing method)
    # run once and share the stored result.
    same: dict[Path, list[int]] = defaultdict(list)
    for index, unit in enumerate(units):
        config = unit_config(suite, unit)
        path = out / "runs" / f"{config_hash(config)}.json"
        same[path].append(index)
        if len(same[path]) > 1:
            continue
        done = json.loads(path.read_text()) if path.is_file() else None
        if done is not None and set(adaptations) <= set(done["reports"]):
            stored[index] = done["reports"]
        else:
            todo.append((index, config, path, done["reports"] if done else {}))
    if stored:
        logger.info("%d of %d runs already in %s; skipping them", len(stored), len(units), out)
    jobs = [
        (config, [s for s in adaptations if s not in earlier]) for _, config, _, earlier in todo
    ]
    bar = tqdm(total=len(todo), desc=f"{suite.name}", unit="run", disable=not progress)
    try:
        for job, new in executor.map(run_unit or run_unit_reports, jobs):
            index, config, path, earlier = todo[job]
            # Keep the adaptations of earlier invocations: the shared stages are seeded, so the
            # unit's source model and scratch baseline are the same ones.
            reports = {**earlier, **new}
            write_json_atomic(path, {"unit": units[index].__dict__, "config": config,
                                     "reports": reports, "environment": machine})  # fmt: skip
            stored[index] = reports
            if trackers:
                log_unit(trackers, suite.name, units[index], config, reports, out, path.stem)
            bar.set_postfix(fusion=units[index].fusion, seed=units[index].seed)
            bar.update()
    finally:
        bar.close()
        executor.close()
    for indices in same.values():
        for index in indices[1:]:
            stored[index] = stored[indices[0]]
    rows: list[dict[str, Any]] = []
    for index, unit in enumerate(units):
        reports = {s: stored[index][s] for s in adaptations}
        rows += _rows(suite, unit, reports)
        if robustness is not None:
            robustness += _robustness_rows(unit, reports)
    return rows


def log_unit(trackers: Sequence[str], project: str, unit: Unit, config: Mapping[str, Any],
             reports: Mapping[str, Mapping[str, Any]], out: Path, key: str) -> None:  # fmt: skip
    """One tracker run per unit: its config, and per adaptation the source metric and
    each target's zero-shot, adapted, scratch, gain and forgetting."""
    from ..engine.trackers import Trackers

    name = f"{unit.fusion}-seed{unit.seed}-{key[:8]}"
    run = Trackers(trackers, project, name, out / "logs").start({"unit": unit.__dict__, **config})
    values: dict[str, float] = {}
    for adaptation, report in reports.items():
        values[f"{adaptation}/source"] = report["source"]
        for target, result in report["targets"].items():
            for m in ("zero_shot", "adapted", "scratch", "transfer_gain", "forgetting"):
                values[f"{adaptation}/{target}/{m}"] = result[m]
    run.log(values, step=0)
    run.finish()


def _robustness_rows(unit: Unit, reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
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


def summarize_robustness(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI over seeds of the metric, loss and relative metric per grid point x
    k x fusion x model x domain x dropped modality."""
    grid_keys = sorted({k for r in rows for k in r} - ROBUSTNESS_KEYS - {"seed"})
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        key = (
            *[r.get(k) for k in grid_keys],
            r["k_shot"],
            r["fusion"],
            r["model"],
            r["domain"],
            r["dropped"],
        )
        groups[key].append(r)
    out = []
    for key, members in groups.items():
        *grid_values, k, fusion, model, domain, dropped = key
        out.append({
            **dict(zip(grid_keys, grid_values, strict=True)), "k_shot": k, "fusion": fusion, "model": model,
            "domain": domain, "dropped": dropped, "metric": members[0]["metric"],
            "value": mean_ci(m["value"] for m in members), "loss": mean_ci(m["loss"] for m in members),
            "relative": mean_ci(m["relative"] for m in members), "seeds": sorted(m["seed"] for m in members),
        })  # fmt: skip
    return out


def robustness_table(summary: Sequence[Mapping[str, Any]], model: str = "source") -> str:
    """Markdown: one line per grid point x fusion x dropped modality for ``model``."""
    entries = [e for e in summary if e["model"] == model]
    if not entries:
        return ""
    grid_keys = [k for k in entries[0] if k not in ROBUSTNESS_KEYS | {"seeds"}]
    metric = entries[0]["metric"]
    head = [*grid_keys, "fusion", "domain", "dropped", metric, "loss", "relative"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [*[str(e[k]) for k in grid_keys], e["fusion"], e["domain"], e["dropped"],
                 _fmt(e["value"]), _fmt(e["loss"]), _fmt(e["relative"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], sort: bool = False) -> None:
    """Rows as CSV, with the union of their keys as columns (sorted by every column if asked)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    if sort:
        rows = sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in fields))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_robustness(
    rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], out: str | Path
) -> dict[str, Path]:
    """robustness.csv (per seed), robustness.json (summary) and robustness.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "robustness.csv", rows)
    write_json_atomic(out / "robustness.json", list(summary))
    models = list(dict.fromkeys(e["model"] for e in summary))
    text = "\n\n".join(f"## {m}\n\n{robustness_table(summary, m)}" for m in models)
    (out / "robustness.md").write_text(f"# Missing modalities at test time\n\n{text}\n")
    return {"robustness_csv": out / "robustness.csv", "robustness_json": out / "robustness.json",
            "robustness_md": out / "robustness.md"}  # fmt: skip


def _rows(
    suite: Suite, unit: Unit, reports: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per adaptation x target x episode (a report from before episodes: one)."""
    rows = []
    for adaptation, report in reports.items():
        for target, result in report["targets"].items():
            common = {
                "suite": suite.name, **dict(unit.grid), "source_domains": "+".join(report["source_domains"]),
                "target": target, "k_shot": unit.k_shot, "fusion": unit.fusion, "adaptation": adaptation, "seed": unit.seed,
                "metric": report["metric"], "source": report["source"], "zero_shot": result["zero_shot"],
                "test_samples": result.get("test_samples", 0), "source_test_samples": report.get("source_test_samples", 0),
                "config_hash": report["config_hash"], "wall_s": sum(report["stage_seconds"].values()),
                "train_s": report["stage_seconds"].get("source_train", math.nan),
                **_imbalance_columns(report.get("imbalance") or {}, target),
            }  # fmt: skip
            episodes = result.get("episodes") or [{**result, "episode": 0, "seed": None}]
            for e in episodes:
                rows.append({**common, "episode": e["episode"], "episode_seed": e["seed"],
                             **{m: e[m] for m in ("adapted", "scratch", "transfer_gain", "forgetting", "adapt_samples")},
                             **({"adapted_ece": e["adapted_ece"]} if e.get("adapted_ece") is not None else {})})  # fmt: skip
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


def _fmt(stat: Mapping[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return (
        f"{stat['mean']:.3f} ± n/a"
        if math.isnan(stat["ci"])
        else f"{stat['mean']:.3f} ± {stat['ci']:.3f}"
    )


def summary_table(summary: Sequence[Mapping[str, Any]], baseline: str = "concat") -> str:
    """A Markdown table: one line per grid point x k x fusion x adaptation x target, with n
    (test rows per target), episodes per seed and seeds; the transfer gain, the gain over
    the best unimodal baseline (marked ✗ where the fusion does not beat it), over
    ``baseline`` and over the ``head`` adaptation, each with its Holm-corrected p and
    minimum detectable difference; and a note on how the CIs and tests are computed."""
    grid_keys = [k for k in summary[0] if k not in _STAT_KEYS and not k.startswith("adapted_vs_")] if summary else []  # fmt: skip
    versus_head = any("adapted_vs_head" in e for e in summary)
    head = [*grid_keys, "k", "fusion", "adaptation", "target", "n", "episodes", "seeds", "source", "zero-shot",
            "adapted", "scratch", "adapted − scratch", "forgetting", "best unimodal", "fusion − unimodal",
            f"adapted − {baseline}", *(["adapted − head"] if versus_head else [])]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [*[str(e[k]) for k in grid_keys], str(e["k_shot"]), e["fusion"], e["adaptation"], e["target"],
                 str(e.get("n", "")), str(e.get("episodes", 1)), str(len(e["seeds"])),
                 *[_fmt(e[m]) for m in ("source", "zero_shot", "adapted", "scratch")],
                 _compare_cell(e["transfer_gain"]), _fmt(e["forgetting"]), *_unimodal_cells(e),
                 _compare_cell(e.get(f"adapted_vs_{baseline}")),
                 *([_compare_cell(e.get("adapted_vs_head"))] if versus_head else [])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + table_note(summary)


def table_note(summary: Sequence[Mapping[str, Any]]) -> str:
    """How the table's CIs and tests were computed."""
    over = sorted({e["adapted"].get("ci_over", "seeds") for e in summary})
    tests = next((c.get("tests", 0) for e in summary for _, c in comparisons(e)), 0)
    return (
        "n: test rows per target (summed for all); episodes: k-shot draws per seed, the same rows "
        "for every fusion and adaptation; seeds: source models. ± is a 95% CI over "
        + " and over ".join(over)
        + ": with 3 seeds or more, the t-interval over the seeds' means "
        "of their episodes (seeds random, episodes nested in them, so both levels count); with "
        "fewer, over every (seed, episode), or an accuracy's binomial interval over its test rows. "
        "Differences are paired on common (seed, episode) and tested by a one-sample t-test on the "
        f"same units; p is Holm-corrected across the table's {tests} tests; MDD is the smallest true "
        f"difference found with 80% power at Bonferroni's level 0.05/{tests}, which bounds Holm's."
    )


def overall_entries(summary: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries over all targets: the "all" rows, or each row where a run had one target."""
    keyed = defaultdict(list)
    for e in summary:
        keyed[
            tuple(
                (k, str(v))
                for k, v in e.items()
                if k not in _STAT_KEYS or k in ("k_shot", "fusion", "adaptation")
            )
        ].append(e)
    out = []
    for group in keyed.values():
        every = [e for e in group if e["target"] == "all"]
        out += every or (group if len(group) == 1 else [])
    return out


def imbalance_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, for rows with imbalance columns: one line per grid point x k x fusion x
    adaptation (mean over targets) with accuracy, transfer gain, the source model's imbalance
    degree on the source and target test splits, the source accuracy it loses without its
    dominant modality, and the source training time. Empty without such rows."""
    entries = [e for e in overall_entries(summary) if "imbalance_degree" in e]
    if not entries:
        return ""
    grid_keys = [k for k in entries[0] if k not in _STAT_KEYS and not k.startswith("adapted_vs_")]
    head = [*grid_keys, "k", "fusion", "adaptation", "source", "zero-shot", "adapted", "gain",
            "imbalance (source)", "imbalance (target)", "loss without dominant", "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [*[str(e[k]) for k in grid_keys], str(e["k_shot"]), e["fusion"], e["adaptation"],
                 *[_fmt(e[m]) for m in ("source", "zero_shot", "adapted", "transfer_gain", *EXTRA_METRICS)]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\n\nImbalance degree: max minus min over modalities of the utilisation (accuracy with that"
        " modality alone, above chance, as a share of the full model's); loss without dominant:"
        " source test accuracy lost when the modality that is best alone is missing. ± is a 95% CI"
        " over seeds."
    )
    return "\n".join(lines) + note


def _unimodal_cells(e: Mapping[str, Any]) -> list[str]:
    best, gain = e.get("best_unimodal"), e.get("gain_vs_unimodal")
    if not best or not gain:
        return ["—", "—"]
    mark = "" if gain["mean"] > 0 else "✗ "
    return [f"{best['modality']} {_fmt(best)}", mark + _compare_cell(gain)]


def _compare_cell(cmp: Mapping[str, float] | None) -> str:
    """``mean ± ci (p=…, MDD …)``, p Holm-corrected where the table has been corrected."""
    if not cmp:
        return "—"
    p = cmp.get("p_holm", cmp.get("p_value", math.nan))
    if math.isnan(p):
        return _fmt(cmp)
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"
    mdd = cmp.get("mdd", math.nan)
    return f"{_fmt(cmp)} ({shown}" + ("" if math.isnan(mdd) else f", MDD {mdd:.3f}") + ")"


def write_results(
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    out: str | Path,
    header: str = "",
    record: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """results.csv, summary.json, summary.md and the PNG plots in ``out``. ``record`` (the
    command, the suite, the environment) goes into summary.json beside the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows, sort=True)
    write_json_atomic(out / "summary.json", {**(record or {}), "summary": list(summary)})
    imbalance = imbalance_table(summary)
    (out / "summary.md").write_text(
        (header + "\n\n" if header else "") + summary_table(summary) + "\n"
        + (f"\n## Modality imbalance\n\n{imbalance}\n" if imbalance else "")
    )  # fmt: skip
    paths = {"csv": out / "results.csv", "json": out / "summary.json", "md": out / "summary.md"}
    paths.update(plot_summary(summary, out))
    if imbalance:
        paths["utilisation"] = plot_utilisation(summary, out / "utilisation.png")
    return paths


def plot_utilisation(summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-modality utilisation of the source models, one panel per fusion, one bar group
    per modality and one bar per grid point (balancing methods, say); first adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in overall_entries(summary) if "utilisation" in e]
    entries = [e for e in entries if e["adaptation"] == entries[0]["adaptation"]]
    grid_keys = [k for k in entries[0] if k not in _STAT_KEYS and not k.startswith("adapted_vs_")]
    fusions = list(dict.fromkeys(e["fusion"] for e in entries))
    modalities = sorted(entries[0]["utilisation"])
    fig, axes = plt.subplots(
        1, len(fusions), figsize=(4.5 * len(fusions), 3.8), squeeze=False, sharey=True
    )
    for ax, fusion in zip(axes[0], fusions, strict=True):
        mine = [e for e in entries if e["fusion"] == fusion]
        width = 0.8 / len(mine)
        for i, e in enumerate(mine):
            stats = [e["utilisation"][m] for m in modalities]
            label = ", ".join(f"{e[k]}" for k in grid_keys) or fusion
            ax.bar(np.arange(len(modalities)) + (i - (len(mine) - 1) / 2) * width, [s["mean"] for s in stats],
                   width, yerr=[0 if math.isnan(s["ci"]) else s["ci"] for s in stats], capsize=2, label=label)  # fmt: skip
        ax.set_xticks(range(len(modalities)), modalities)
        ax.set_title(fusion)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("utilisation (source test)")
    axes[0][-1].legend(fontsize=7, title=", ".join(grid_keys) or None, title_fontsize=7)
    fig.suptitle("accuracy with one modality alone, above chance, as a share of the full model's;"
                 " error bars: 95% CI over seeds", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_summary(summary: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Path]:
    """Grouped bars (zero-shot, adapted, scratch per fusion and adaptation, mean over targets)
    and a heatmap of adapted accuracy, fusion x target, per adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = overall_entries(summary)
    adaptations = sorted({e["adaptation"] for e in overall})
    fusions = sorted({e["fusion"] for e in overall})
    paths = {}
    fig, axes = plt.subplots(
        1, len(adaptations), figsize=(4.5 * len(adaptations), 4), squeeze=False, sharey=True
    )
    colors = {"zero_shot": "#9e9e9e", "adapted": "#1f77b4", "scratch": "#ff7f0e"}
    for ax, adaptation in zip(axes[0], adaptations, strict=True):
        x = np.arange(len(fusions))
        for i, m in enumerate(("zero_shot", "adapted", "scratch")):
            stats = [
                next(
                    (e[m] for e in overall if e["fusion"] == f and e["adaptation"] == adaptation),
                    {"mean": math.nan, "ci": math.nan},
                )
                for f in fusions
            ]
            means = [s["mean"] for s in stats]
            errs = [0 if math.isnan(s["ci"]) else s["ci"] for s in stats]
            ax.bar(
                x + (i - 1) * 0.27,
                means,
                0.27,
                yerr=errs,
                capsize=3,
                label=m.replace("_", "-"),
                color=colors[m],
            )
        ax.set_xticks(x, fusions, rotation=20)
        ax.set_title(f"adaptation: {adaptation}")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("target accuracy")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.suptitle("mean over target domains; error bars: 95% CI over seeds", fontsize=9)
    fig.tight_layout()
    paths["bars"] = out / "bars.png"
    fig.savefig(paths["bars"], dpi=120)
    plt.close(fig)
    paths["heatmap"] = _plot_heatmap(summary, adaptations, fusions, out / "heatmap.png")
    return paths


def _plot_heatmap(summary: Sequence[Mapping[str, Any]], adaptations: list[str],
                  fusions: list[str], path: Path) -> Path:  # fmt: skip
    """Adapted accuracy, fusion x target, one panel per adaptation."""
    import matplotlib.pyplot as plt

    targets = sorted({e["target"] for e in summary if e["target"] != "all"})
    fig, axes = plt.subplots(
        1, len(adaptations), figsize=((1.2 * len(targets) + 1.5) * len(adaptations) + 2, 0.5 * len(fusions) + 2),
        squeeze=False, sharey=True,
    )  # fmt: skip
    for ax, adaptation in zip(axes[0], adaptations, strict=True):
        grid = np.full((len(fusions), len(targets)), np.nan)
        for e in summary:
            if e["adaptation"] == adaptation and e["target"] in targets:
                grid[fusions.index(e["fusion"]), targets.index(e["target"])] = e["adapted"]["mean"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(targets)), targets, rotation=30)
        if ax is axes[0][0]:
            ax.set_yticks(range(len(fusions)), fusions)
        else:
            ax.tick_params(labelleft=False)
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                color = "white" if v < 0.6 else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=color, fontsize=8)
        ax.set_title(f"adapted accuracy ({adaptation})")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# Result-row columns that identify a row of the table (with the grid axes): not values,
# not the seed or episode, not timings.
_NOT_KEYS = {"seed", "episode", "episode_seed", "metric", "adapt_samples", "test_samples",
             "source_test_samples", "config_hash", "wall_s", "adapted_ece", *METRICS, *EXTRA_METRICS}  # fmt: skip
COMPARE_TOLERANCE = 0.02


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
                        else (float(v) if k in _NOT_KEYS else v)
                    )
                except ValueError:
                    row[k] = v
            row.setdefault("episode", 0)
            rows.append(row)
    return rows


def _row_key(row: Mapping[str, Any]) -> tuple:
    return tuple(
        sorted((k, str(v)) for k, v in row.items() if k not in _NOT_KEYS and not k.startswith(UTIL))
    )


def compare_results(
    new: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
    tolerance: float = COMPARE_TOLERANCE, metric: str = "adapted",
) -> dict[str, Any]:  # fmt: skip
    """Per row of the reference's table (per target, not "all"): the rerun's ``metric`` minus
    the reference's, paired on the (seed, episode) both hold, its mean and 95% CI over seeds
    and episodes (``stats.two_level``). A row agrees when the mean difference is within
    ``tolerance``; the comparison passes when every row present in both agrees."""
    from .stats import two_level

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
