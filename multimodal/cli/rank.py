"""`multimodal rank`: a suite's candidates scored before any adaptation (transferability
estimators), and with --validate those scores checked against a benchmark's measurements."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._common import add_overwrite, positive_int, refuse_to_replace

DEFAULT_OUT = Path("runs") / "rank"
RANK_FILES = ("rankings.csv", "rank.json", "validation.md")


def run_rank(args: argparse.Namespace) -> int:
    import time

    from ..core.io import write_json_atomic
    from ..experiments.bench import find_suite, load_suite, prepare_data
    from ..experiments.rank import rank_suite, validate, validation_table
    from ..experiments.transfer.plan import PROGRESS_ENV
    from ..experiments.transfer.ranking import estimator_names

    if args.auto:
        return _auto(Path(args.auto), args.out, args.overwrite)
    if args.from_results:
        return _from_results(Path(args.from_results), args.out, args.overwrite)
    # an unknown name: one line naming the known ones
    estimators = estimator_names(args.estimators.split(",") if args.estimators else "all")
    suite = load_suite(find_suite(args.suite or "real-digits-quick"))
    suite = suite.with_overrides(unimodal=not args.no_unimodal)
    out = Path(args.out or DEFAULT_OUT / suite.name)
    refuse_to_replace([out / name for name in RANK_FILES], args.overwrite)
    prepare_data(suite)
    os.environ.setdefault(PROGRESS_ENV, "inner")  # each source stage's bar only while it runs
    start = time.perf_counter()
    rows = rank_suite(suite, args.fusion.split(",") if args.fusion else None, args.seeds,
                      estimators, reuse=not args.retrain, zero_shot=bool(args.validate))  # fmt: skip
    seconds = time.perf_counter() - start
    _write_rankings(out, rows)
    print(_pick_table(rows, estimators))
    record: dict[str, Any] = {
        "suite": suite.name,
        "seconds": seconds,
        "rows": len(rows),
        "estimators": estimators,
    }
    if args.validate:
        result = validate(rows, Path(args.validate) / "results.csv", estimators)
        table = validation_table(result, estimators)
        (out / "validation.md").write_text(
            validation_page(suite.name, result, table, args.validate)
        )
        record["validation"] = result
        print("\n" + table)
    models = {(r["candidate"].split("+")[0], r["seed"]): r["source_model"] for r in rows}
    reused = sum(v == "reused" for v in models.values())
    record["source_models"] = {"reused": reused, "trained": len(models) - reused}
    write_json_atomic(out / "rank.json", record)
    print(f"\n{len(rows)} rows in {seconds:.0f} s ({len(models)} source models: {reused} reused "
          f"from an earlier command, {len(models) - reused} trained); wrote {out / 'rankings.csv'}",
          file=sys.stderr)  # fmt: skip
    return 0


def _write_rankings(out: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rankings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def _from_results(results: Path, out: str | None, overwrite: bool) -> int:
    """The scores a benchmark's rank stage wrote (``--rank``), validated against the same
    benchmark's adapted accuracy: no model is trained."""
    import json

    from ..core.io import write_json_atomic
    from ..experiments.rank import stage_rows, validate, validation_table

    folder = Path(out or results / "rank")
    refuse_to_replace([folder / name for name in RANK_FILES], overwrite)
    rows, estimators = stage_rows(results / "results.csv")
    seconds = {"rank": 0.0, "suite": 0.0}  # the rank stage's share of the units' stage seconds
    for path in sorted((results / "runs").glob("*.json")):
        reports = json.loads(path.read_text()).get("reports") or {}
        stages = next(iter(reports.values()), {}).get("stage_seconds") or {}
        seconds["rank"] += stages.get("rank", 0.0)
        seconds["suite"] += sum(stages.values())
    _write_rankings(folder, rows)
    print(_pick_table(rows, estimators))
    result = validate(rows, results / "results.csv", estimators)
    table = validation_table(result, estimators)
    suite = rows[0]["suite"]
    (folder / "validation.md").write_text(validation_page(suite, result, table, str(results)))
    write_json_atomic(folder / "rank.json", {"suite": suite, "rows": len(rows), "estimators": estimators,
                                             "stage_seconds": seconds, "validation": result})  # fmt: skip
    share = seconds["rank"] / seconds["suite"] if seconds["suite"] else float("nan")
    print(f"\n{table}\n\nthe rank stage: {seconds['rank']:.1f} s of the units' {seconds['suite']:.0f} s "
          f"({share:.1%}); wrote {folder}", file=sys.stderr)  # fmt: skip
    return 0


def validation_page(suite: str, result: dict[str, Any], table: str, against: str) -> str:
    seeds = max((v.get("seeds", 0) for v in result["summary"].values()), default=0)
    return (
        f"# {suite}: estimates before adapting against measured adapted accuracy\n\n"
        f"Measured: `{against}/results.csv` (adaptation head; a `+arm` candidate: after that arm, "
        f"which reads no label). {result['episodes']} (seed, target, "
        f"episode) cells of {len(result['candidates'])} candidates ({', '.join(result['candidates'])}); "
        f"each value is a mean over {seeds} seeds of the seed's mean over its cells, ± the 95% t CI. "
        "Regret: the best candidate's adapted accuracy minus the pick's. The random pick's regret is "
        "its expectation. Differences are paired on seeds (two-sided one-sample t on the per-seed "
        f"differences); p is Holm-corrected over the {len(result['tests'])} tests of the table. The "
        f"ranked source models are the benchmark's: their zero-shot scores differ by at most "
        f"{result['zero_shot_max_difference']:.2g}.\n\n{table}\n"
    )


def _auto(results: Path, out: str | None, overwrite: bool) -> int:
    """transfer.adaptation: auto against its arms, from a benchmark that ran them all."""
    from ..core.io import write_json_atomic
    from ..experiments.rank import auto_regret

    folder = Path(out or results)
    refuse_to_replace([folder / "auto.md", folder / "auto.json"], overwrite)
    r = auto_regret(results / "results.csv")

    def cell(key: str) -> str:
        v = r.get(key, {})
        return f"{v.get('mean', float('nan')):+.4f} ± {v.get('ci', float('nan')):.4f}"

    table = "\n".join([
        f"`auto` on {r['cells']} (fusion, seed, target, episode) cells of `{results}`; means over "
        f"{r['auto regret'].get('n', 0)} seeds ± 95% t CI; paired t on the seeds, Holm over 2 tests.", "",
        "| quantity | value | Holm p |", "|---|---|---|",
        f"| auto's regret (oracle arm − auto) | {cell('auto regret')} | {r['p_holm']['auto regret']:.3g} |",
        f"| head's regret (oracle arm − head) | {cell('head regret')} | |",
        f"| auto − head | {cell('auto - head')} | {r['p_holm']['auto - head']:.3g} |",
        *[f"| share of cells where the oracle is {a} | {cell('oracle is ' + a)} | |" for a in ("head", "l2sp", "lwf")],
    ])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "auto.md").write_text(f"# transfer.adaptation: auto\n\n{table}\n")
    write_json_atomic(folder / "auto.json", r)
    print(table)
    return 0


def _pick_table(rows: list[dict[str, Any]], estimators: list[str]) -> str:
    """How often each estimator ranks each candidate first, per target, over seeds and episodes."""
    from collections import Counter, defaultdict

    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cells[(r["target"], r["source_domains"], r["k_shot"], r["seed"], r["episode"])].append(r)
    candidates = sorted({r["candidate"] for r in rows})
    lines = []
    for target in sorted({r["target"] for r in rows}):
        mine = [c for (t, *_), c in cells.items() if t == target]
        lines += [f"{target}: the candidate each estimator ranks first, share of {len(mine)} episodes",
                  "| estimator | " + " | ".join(candidates) + " |", "|---" * (len(candidates) + 1) + "|"]  # fmt: skip
        for name in estimators:
            firsts = Counter(max(c, key=lambda r: r[name])["candidate"] for c in mine)
            lines.append(
                f"| {name} | "
                + " | ".join(f"{firsts[k] / len(mine):.2f}" for k in candidates)
                + " |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def add_rank(sub: Any) -> None:
    p = sub.add_parser("rank", help="score a suite's candidates (fusions, encoder sets) on each "
                       "episode's labelled target rows with transferability estimators, before adapting")  # fmt: skip
    p.add_argument(
        "--suite",
        help="a suite name in benchmarks/suites or a YAML path (default: real-digits-quick)",
    )
    p.add_argument("--seeds", type=positive_int, help="number of seeds (default: the suite's)")
    p.add_argument("--no-unimodal", action="store_true", help="leave out the one-modality "
                   "candidates (as for a benchmark run with --no-unimodal)")  # fmt: skip
    p.add_argument("--fusion", help="comma-separated fusions (default: the suite's; its "
                   "one-modality candidates come with them)")  # fmt: skip
    p.add_argument("--estimators", help="comma-separated estimators (default: all: "
                   "gbc, hscore, hscore_reg, leep, logme, nce, transrate)")  # fmt: skip
    p.add_argument("--validate", metavar="RESULTS_DIR",
                   help="a benchmark's results folder of the same suite (its results.csv): Kendall "
                   "tau, weighted tau and top-1 regret of each estimator against the measured "
                   "adapted accuracy, CIs over seeds, Holm against a random pick")  # fmt: skip
    p.add_argument("--auto", metavar="RESULTS_DIR",
                   help="only compare transfer.adaptation: auto with the arms it chooses from (head, "
                   "l2sp, lwf) in a benchmark that ran them all: its regret against the oracle arm and "
                   "against head, paired on (seed, episode); writes auto.md and auto.json")  # fmt: skip
    p.add_argument("--from", dest="from_results", metavar="RESULTS_DIR",
                   help="read the scores a benchmark's rank stage wrote (multimodal bench --rank, "
                   "transfer.rank) and validate them against its adapted accuracy, training nothing; "
                   "writes to RESULTS_DIR/rank unless --out")  # fmt: skip
    p.add_argument("--retrain", action="store_true", help="train every candidate's source model, "
                   "even one an earlier bench, transfer or rank stored with the same inputs "
                   "(TRANSFERFUSE_CACHE, default ~/.cache/transferfuse)")  # fmt: skip
    p.add_argument("--out", help=f"results folder (default: {DEFAULT_OUT}/SUITE)")
    add_overwrite(p, "the rankings, rank.json, validation.md (or auto.md, auto.json) in --out")
    p.set_defaults(func=run_rank)
