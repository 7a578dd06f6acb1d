"""`multimodal bench`: run a benchmark suite (what ``benchmarks/cross_domain.py`` runs)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._common import add_overwrite, count, non_negative_float, positive_float, positive_int

DESCRIPTION = """Compare fusion modules on a cross-domain suite: transfer runs over fusions, adaptations
and seeds, written as results.csv, summary.md/json (mean ± 95% CI) and PNG plots.

    multimodal bench [--suite NAME|PATH] [--fusion concat,cross_attention,moe|all]
        [--adaptation head,full] [--uda dann,coral] [--seeds N] [--episodes N] [--out DIR]
        [--robustness] [--modality-dropout 0,0.3] [--no-unimodal] [--compare-to DIR]
        [--workers N] [--ray-address auto|ray://HOST:PORT] [--cpus-per-run C] [--gpus-per-run G]
        [--trackers tensorboard,mlflow]

With no --suite: the main job, the real-digits-quick suite (real signals from PyPI packages,
pretrained frozen encoders; its data built on the first run) and its default fusions,
written to runs/benchmarks/real-digits-quick. Runs already in --out are skipped, so an interrupted
benchmark resumes and a finished one only rewrites the summary; runs that other code of
the toolkit stored (before an update) run again. Each modality alone
(``image-only``, ...) runs beside the fusions under the same protocol, unless --no-unimodal.

--compare-to DIR reruns the reference in DIR (its suite, fusions, adaptations, seeds and
episodes, as its summary.json recorded them) into --out, or reads that rerun if --out holds
it, and pairs each row's adapted metric with the reference's (results.csv) on common seeds
and episodes; it exits with status 1 when a row's mean paired difference exceeds
--tolerance.

--workers N runs N units at a time as Ray tasks on a local Ray instance (nothing to start
first); --ray-address runs them on an existing Ray cluster instead, whose nodes have this
package installed. A unit computes the same numbers wherever it runs, given the same torch
thread count (--threads-per-run; by default this process's); a unit whose worker dies is
run again (--max-retries). Without either flag units run one after another here
and Ray is not imported. --trackers logs one tracker run per unit (MLflow reads
MLFLOW_TRACKING_URI; TensorBoard writes to OUT/logs).

--robustness also evaluates every source and adapted model with each modality missing at
test time (robustness.csv/json/md); --modality-dropout crosses the runs with training-time
modality dropout rates, so the tables compare models trained with and without it.
"""


# The suite that runs with no --suite: the README's first command.
MAIN_JOB = "real-digits-quick"


def default_out(suite: str) -> Path:
    """Where results go without --out."""
    return Path("runs") / "benchmarks" / suite


def add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a cross-domain benchmark suite and write its tables",
                       description=DESCRIPTION)  # fmt: skip
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", help="a suite name in benchmarks/suites or a YAML path (default: "
                   "real-digits-quick, the main job, or with --compare-to the reference's)")  # fmt: skip
    p.add_argument("--fusion", help="comma-separated fusions, or 'all' for every registered one "
                   "(default: the suite's list)")  # fmt: skip
    p.add_argument("--adaptation", "--strategy", dest="adaptation",
                   help="comma-separated adaptation arms (multimodal.experiments.adaptations): "
                   "head, top_k, full, lora, l2sp, fixmatch, ... (default: the suite's list); "
                   "--strategy is its deprecated old name")  # fmt: skip
    p.add_argument("--uda", "--adapt", dest="uda",
                   help="comma-separated unsupervised methods to add beside the k-shot adaptations: "
                   "dann,cdan,coral,mmd,entropy; source_only is their control (the same extra "
                   "source training, no target rows); --adapt is its deprecated old name")  # fmt: skip
    p.add_argument("--seeds", type=positive_int, help="number of seeds (default: the suite's)")
    p.add_argument("--episodes", type=positive_int, help="k-shot episodes per target and seed, the same rows "
                   "for every fusion and adaptation (transfer.episodes; default: the suite's)")  # fmt: skip
    p.add_argument("--out", type=Path, help=f"results folder (default: {default_out('SUITE')})")
    p.add_argument("--no-unimodal", action="store_true", help="skip the one-modality baselines")
    p.add_argument("--compare-to", type=Path, metavar="DIR", help="a reference results folder "
                   "(its summary.json and results.csv) to rerun and check against")  # fmt: skip
    p.add_argument("--tolerance", type=non_negative_float, default=0.02, help="with --compare-to: the largest "
                   "mean paired difference of a row's adapted metric from the reference's that "
                   "still agrees")  # fmt: skip
    p.add_argument("--robustness", action="store_true",
                   help="also evaluate each model with every modality missing in turn")  # fmt: skip
    p.add_argument("--modality-dropout",
                   help="comma-separated training modality dropout rates to cross, e.g. 0,0.3")  # fmt: skip
    p.add_argument("--balance", help="comma-separated modality-balancing methods to cross with the "
                   "fusions, e.g. none,ogm_ge,grad_blend,unimodal_aux (train.balance); implies "
                   "--imbalance")  # fmt: skip
    p.add_argument("--imbalance", action="store_true", help="also measure each source model's "
                   "per-modality utilisation and imbalance degree")  # fmt: skip
    p.add_argument("--rank", nargs="?", const="all", metavar="ESTIMATORS", help="also score each "
                   "episode's labelled rows with transferability estimators from the source model, "
                   "before adapting (transfer.rank; default all): rank_<estimator> columns that "
                   "`multimodal rank --from` validates")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(
        p, "results.csv, the summary and the plots of another plan (other runs or arms) in --out"
    )
    # What summary.md names as the command (benchmarks/cross_domain.py sets its own).
    p.add_argument("--invoked-as", default="multimodal bench", help=argparse.SUPPRESS)
    _add_scale_arguments(p)


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scale-out (Ray) and tracking")
    scale.add_argument("--workers", type=positive_int,
                       help="units run at a time on Ray (default: one after another, no Ray)")  # fmt: skip
    scale.add_argument("--ray-address", help="an existing Ray cluster: auto, or ray://HOST:PORT")
    scale.add_argument(
        "--cpus-per-run", type=positive_float, default=1.0, help="CPUs each unit holds on Ray"
    )
    scale.add_argument(
        "--gpus-per-run", type=non_negative_float, default=0.0, help="GPUs each unit holds on Ray"
    )
    scale.add_argument("--threads-per-run", type=positive_int,
                       help="torch threads per unit on Ray (default: this process's count, so each "
                       "unit computes what a sequential run here computes)")  # fmt: skip
    scale.add_argument("--max-retries", type=count, default=3,
                       help="times a unit is rerun when its Ray worker dies")  # fmt: skip
    scale.add_argument("--trackers",
                       help="comma-separated accelerate trackers, one run per unit: tensorboard,mlflow,wandb")  # fmt: skip


def _executor(args: argparse.Namespace) -> Any:
    """A Ray executor when --workers or --ray-address asks for one, else None (in-process)."""
    if args.workers is None and args.ray_address is None:
        return None
    from ..experiments.distributed import RayExecutor

    return RayExecutor(workers=args.workers, address=args.ray_address, cpus_per_run=args.cpus_per_run,
                       gpus_per_run=args.gpus_per_run, max_retries=args.max_retries,
                       threads_per_run=args.threads_per_run)  # fmt: skip


def _reference_args(args: argparse.Namespace) -> dict[str, Any]:
    """The reference's summary.json; its recorded settings fill the arguments not given."""
    path = args.compare_to / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"--compare-to {args.compare_to}: no summary.json there")
    reference = json.loads(path.read_text())
    settings = reference.get("settings") or {}
    args.suite = args.suite or settings.get("suite")
    args.fusion = args.fusion or ",".join(settings.get("fusions", [])) or None
    recorded = settings.get("adaptations", settings.get("strategies", []))
    args.adaptation = args.adaptation or ",".join(recorded) or None
    args.seeds = args.seeds or settings.get("seeds")
    args.episodes = args.episodes or settings.get("episodes")
    args.no_unimodal = args.no_unimodal or settings.get("unimodal") is False
    return reference


def _suite(args: argparse.Namespace) -> Any:
    """The suite with the flags' changes, its data built if missing."""
    from ..experiments.bench import find_suite, load_suite, prepare_data

    split = lambda text: text.split(",") if text else None  # noqa: E731
    suite = load_suite(find_suite(args.suite or MAIN_JOB)).with_overrides(
        unimodal=not args.no_unimodal, episodes=args.episodes,
        modality_dropout=[float(p) for p in split(args.modality_dropout) or []],
        balance=split(args.balance), imbalance=args.imbalance, robustness=args.robustness,
        rank=split(args.rank),
    )  # fmt: skip
    prepare_data(suite)
    return suite


def _arms(args: argparse.Namespace, suite: Any) -> tuple[list[str], list[str]]:
    """The fusions and adaptations the flags ask for (default: the suite's)."""
    from fusion import list_fusions

    if args.fusion == "all":
        fusions = list_fusions()
    else:
        fusions = args.fusion.split(",") if args.fusion else list(suite.fusions)
    adaptations = args.adaptation.split(",") if args.adaptation else list(suite.adaptations)
    if args.uda:
        adaptations += [m for m in args.uda.split(",") if m not in adaptations]
    return fusions, adaptations


def _warn_old_flags(argv: list[str]) -> None:
    for old, new in (("--adapt", "--uda"), ("--strategy", "--adaptation")):
        if any(a == old or a.startswith(old + "=") for a in argv):
            print(f"{old} is deprecated: the flag is now {new}", file=sys.stderr)


def _quiet_libraries() -> None:
    """Only the warnings of this toolkit's own INFO lines (the libraries' noise is quieted
    for every command, ``cli.noise``): a benchmark prints its tables, not each stage."""
    logging.getLogger().setLevel(logging.WARNING)


def run_bench(args: argparse.Namespace) -> int:
    reference = _reference_args(args) if args.compare_to else None
    _warn_old_flags(sys.argv[1:])
    if not args.verbose:
        _quiet_libraries()
    suite = _suite(args)
    out = args.out or default_out(suite.name)
    from ..experiments.transfer.plan import PROGRESS_ENV

    # --quiet: no bar inside each unit either (here and in Ray workers); else each unit's
    # bar of stages shows while it runs, under the bar of units
    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "0" if args.quiet else "inner"
    try:
        return _bench(args, reference, suite, out)
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = previous


def _bench(args: argparse.Namespace, reference: dict[str, Any] | None, suite: Any,
           out: Path) -> int:  # fmt: skip
    from ..core.provenance import environment
    from ..experiments.bench import run_benchmark, summarize

    fusions, adaptations = _arms(args, suite)
    robustness: list | None = [] if args.robustness else None
    seeds = args.seeds or suite.seeds
    planned = {"runs": _planned_runs(suite, fusions, seeds), "adaptations": adaptations}
    _refuse_another_plan(out, planned, args.overwrite)
    start = time.perf_counter()
    rows = run_benchmark(suite, out, fusions, adaptations, seeds, progress=not args.quiet,
                         robustness=robustness, executor=_executor(args),
                         trackers=args.trackers.split(",") if args.trackers else ())  # fmt: skip
    summary = summarize(rows, versus=suite.versus)
    command = " ".join([args.invoked_as, *_given(sys.argv, args.invoked_as)])
    header = f"# {suite.name}\n\n{suite.description.strip()}\n\nCommand: `{command}`. Metric: {rows[0]['metric']}."
    settings = {"suite": suite.name, "fusions": fusions, "adaptations": adaptations, "seeds": seeds,
                "episodes": suite.episodes, "unimodal": suite.unimodal, "command": command}  # fmt: skip
    record = {"settings": settings, "plan": planned, "environment": environment()}
    paths = _write(rows, summary, robustness, out, header, record)
    print(f"\n{len(rows)} result rows in {time.perf_counter() - start:.0f} s; wrote "
          + ", ".join(str(p) for p in paths.values()))  # fmt: skip
    if reference is not None and not _compare(rows, reference, args, out):
        return 1
    return 0


def _planned_runs(suite: Any, fusions: list[str], seeds: int) -> list[str]:
    """The names of the stored runs (``out/runs/<hash>.json``) the plan reads."""
    from ..core.config import config_hash
    from ..experiments.bench import plan, unit_config

    return sorted({config_hash(unit_config(suite, unit)) for unit in plan(suite, fusions, seeds)})


def _refuse_another_plan(out: Path, planned: dict[str, list[str]], overwrite: bool) -> None:
    """results.csv and the summary in ``out`` are its plan's (``summary.json``'s ``plan``):
    another plan's rows would replace them, so it needs --overwrite. The runs stored in
    ``out`` are reused either way; a summary without a plan (older) is not checked."""
    try:
        recorded = json.loads((out / "summary.json").read_text()).get("plan")
    except (OSError, ValueError):
        return  # none, or unreadable: nothing a rerun would lose
    if overwrite or recorded is None or recorded == planned:
        return

    def described(p: dict[str, list[str]]) -> str:
        runs = len(p["runs"])
        return f"{runs} run{'s' * (runs != 1)}, arms {','.join(p['adaptations'])}"

    raise FileExistsError(
        f"{out} holds the results of another plan ({described(recorded)}; this one: "
        f"{described(planned)}); write to another --out, or pass --overwrite to replace its "
        "results.csv and summary (the runs stored there are reused)"
    )


def _given(argv: list[str], invoked_as: str) -> list[str]:
    """The arguments as the user typed them, without the program and the hidden flag."""
    words = argv[1:]
    if words[:1] == ["bench"]:
        words = words[1:]
    return [w for w in words if not w.startswith("--invoked-as") and w != invoked_as]


def _write(rows: list, summary: list, robustness: list | None, out: Path, header: str,
           record: dict[str, Any]) -> dict[str, Path]:  # fmt: skip
    """The files and the printed tables."""
    from ..experiments.bench import (
        imbalance_table,
        robustness_table,
        summarize_robustness,
        summary_table,
        write_results,
        write_robustness,
    )

    paths = write_results(rows, summary, out, header, record)
    print(summary_table(summary))
    if imbalance_table(summary):
        print("\nModality imbalance of the source models:\n" + imbalance_table(summary))
    if robustness:
        robust_summary = summarize_robustness(robustness)
        paths.update(write_robustness(robustness, robust_summary, out))
        print("\nSource models on the source test split, each modality missing in turn:")
        print(robustness_table(robust_summary, "source"))
    return paths


def _compare(rows: list, reference: dict[str, Any], args: argparse.Namespace, out: Path) -> bool:
    from ..core.io import write_json_atomic
    from ..experiments.bench import compare_results, comparison_table, read_results

    result = compare_results(rows, read_results(args.compare_to / "results.csv"), args.tolerance)
    result["reference_environment"] = reference.get("environment")
    write_json_atomic(out / "compare.json", result)
    table = comparison_table(result)
    (out / "compare.md").write_text(table + "\n")
    print("\n" + table)
    return result["passed"]
