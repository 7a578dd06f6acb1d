"""Compare fusion modules on a cross-domain suite: transfer runs over fusions, adaptations
and seeds, written as results.csv, summary.md/json (mean ± 95% CI) and PNG plots.

    python benchmarks/cross_domain.py [--suite NAME|PATH] [--fusion concat,cross_attention,moe|all]
        [--adaptation head,full] [--uda dann,coral] [--seeds N] [--episodes N] [--out DIR]
        [--robustness] [--modality-dropout 0,0.3] [--no-unimodal] [--compare-to DIR]
        [--workers N] [--ray-address auto|ray://HOST:PORT] [--cpus-per-run C] [--gpus-per-run G]
        [--trackers tensorboard,mlflow]

With no arguments: the synthetic-quick suite and its default fusions, written to
runs/benchmarks/synthetic-quick. Runs already in --out are skipped, so an interrupted
benchmark resumes and a finished one only rewrites the summary. Each modality alone
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

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

SUITES = Path(__file__).parent / "suites"


def default_out(suite: str) -> Path:
    """Where results go without --out."""
    return Path("runs") / "benchmarks" / suite


def _suite_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    candidate = SUITES / f"{name}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in SUITES.glob("*.yaml"))
        raise SystemExit(f"unknown suite {name!r}; suites: {', '.join(known)}")
    return candidate


def build_parser() -> argparse.ArgumentParser:
    from multimodal.cli._common import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument(
        "--suite",
        help="a suite name in benchmarks/suites or a YAML path (default: synthetic-quick, or "
        "with --compare-to the reference's)",
    )
    parser.add_argument(
        "--fusion",
        help="comma-separated fusions, or 'all' for every registered one (default: the suite's list)",
    )
    parser.add_argument(
        "--adaptation",
        "--strategy",
        dest="adaptation",
        help="comma-separated adaptations: freezing strategies fine-tuned on the k-shot sample "
        "(head, top_k, full, lora) (default: the suite's list)",
    )
    parser.add_argument(
        "--uda",
        "--adapt",
        dest="uda",
        help="comma-separated unsupervised methods to add beside the k-shot adaptations: dann,cdan,coral,mmd,entropy; "
        "source_only is their control (the same extra source training, no target rows)",
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the suite's)")
    parser.add_argument(
        "--episodes",
        type=int,
        help="k-shot episodes per target and seed, the same rows for every fusion and "
        "adaptation (transfer.episodes; default: the suite's)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"results folder (default: {default_out('SUITE')})"
    )
    parser.add_argument(
        "--no-unimodal", action="store_true", help="skip the one-modality baselines"
    )
    parser.add_argument(
        "--compare-to",
        type=Path,
        metavar="DIR",
        help="a reference results folder (its summary.json and results.csv) to rerun and check against",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="with --compare-to: the largest mean paired difference of a row's adapted metric "
        "from the reference's that still agrees",
    )
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also evaluate each model with every modality missing in turn",
    )
    parser.add_argument(
        "--modality-dropout",
        help="comma-separated training modality dropout rates to cross, e.g. 0,0.3",
    )
    parser.add_argument(
        "--balance",
        help="comma-separated modality-balancing methods to cross with the fusions, e.g. "
        "none,ogm_ge,grad_blend,unimodal_aux (train.balance); implies --imbalance",
    )
    parser.add_argument(
        "--imbalance",
        action="store_true",
        help="also measure each source model's per-modality utilisation and imbalance degree",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_scale_arguments(parser)
    return parser


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scale-out (Ray) and tracking")
    scale.add_argument(
        "--workers",
        type=int,
        help="units run at a time on Ray (default: one after another, no Ray)",
    )
    scale.add_argument("--ray-address", help="an existing Ray cluster: auto, or ray://HOST:PORT")
    scale.add_argument(
        "--cpus-per-run", type=float, default=1.0, help="CPUs each unit holds on Ray"
    )
    scale.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="GPUs each unit holds on Ray"
    )
    scale.add_argument("--threads-per-run", type=int,
                       help="torch threads per unit on Ray (default: this process's count, so each unit computes "
                       "what a sequential run here computes)")  # fmt: skip
    scale.add_argument("--max-retries", type=int, default=3,
                       help="times a unit is rerun when its Ray worker dies")  # fmt: skip
    scale.add_argument(
        "--trackers",
        help="comma-separated accelerate trackers, one run per unit: tensorboard,mlflow,wandb",
    )


def _executor(args: argparse.Namespace):
    """A Ray executor when --workers or --ray-address asks for one, else None (in-process)."""
    if args.workers is None and args.ray_address is None:
        return None
    from multimodal.experiments.distributed import RayExecutor

    return RayExecutor(workers=args.workers, address=args.ray_address, cpus_per_run=args.cpus_per_run,
                       gpus_per_run=args.gpus_per_run, max_retries=args.max_retries,
                       threads_per_run=args.threads_per_run)  # fmt: skip


def _reference_args(args: argparse.Namespace) -> dict:
    """The reference's summary.json; its recorded settings fill the arguments not given."""
    import json

    path = args.compare_to / "summary.json"
    if not path.is_file():
        raise SystemExit(f"--compare-to {args.compare_to}: no summary.json there")
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


def _prepare_data(suite) -> None:
    """Build a suite's local dataset with its builder script when the folder is missing."""
    import importlib.util

    path = Path(suite.base.get("data", {}).get("path", ""))
    if suite.builder is None or path.exists():
        return
    script = Path(__file__).parent / suite.builder
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    print(f"building {path} with {script.name} (first run only)", file=sys.stderr)
    module.build(path)


def _compare(rows: list, reference: dict, args: argparse.Namespace, out: Path) -> bool:
    from multimodal.core.io import write_json_atomic
    from multimodal.experiments.bench import compare_results, comparison_table, read_results

    result = compare_results(rows, read_results(args.compare_to / "results.csv"), args.tolerance)
    result["reference_environment"] = reference.get("environment")
    write_json_atomic(out / "compare.json", result)
    table = comparison_table(result)
    (out / "compare.md").write_text(table + "\n")
    print("\n" + table)
    return result["passed"]


def main() -> None:
    args = build_parser().parse_args()
    reference = _reference_args(args) if args.compare_to else None

    import datasets
    import transformers

    from multimodal.core.provenance import environment
    from multimodal.experiments.bench import (
        imbalance_table,
        load_suite,
        robustness_table,
        run_benchmark,
        summarize,
        summarize_robustness,
        summary_table,
        write_results,
        write_robustness,
    )

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    suite = load_suite(_suite_path(args.suite or "synthetic-quick"))
    suite.unimodal = suite.unimodal and not args.no_unimodal
    _prepare_data(suite)
    out = args.out or default_out(suite.name)
    from fusion import list_fusions

    fusions = (
        list_fusions()
        if args.fusion == "all"
        else (args.fusion.split(",") if args.fusion else list(suite.fusions))
    )
    adaptations = args.adaptation.split(",") if args.adaptation else list(suite.adaptations)
    for old, new in (("--adapt", "--uda"), ("--strategy", "--adaptation")):
        if any(a == old or a.startswith(old + "=") for a in sys.argv[1:]):
            print(f"{old} is deprecated: the flag is now {new}", file=sys.stderr)
    if args.uda:
        adaptations += [m for m in args.uda.split(",") if m not in adaptations]
    if args.modality_dropout:
        suite.grid["train.modality_dropout"] = [float(p) for p in args.modality_dropout.split(",")]
    if args.balance:
        suite.grid["train.balance"] = args.balance.split(",")
    if args.balance or args.imbalance:
        suite.base.setdefault("transfer", {})["imbalance"] = True
    robustness: list | None = None
    if args.robustness:
        suite.base.setdefault("transfer", {})["robustness"] = True
        robustness = []
    seeds = args.seeds or suite.seeds
    if args.episodes:
        suite.base.setdefault("transfer", {})["episodes"] = args.episodes
    episodes = int((suite.base.get("transfer") or {}).get("episodes", 1))
    start = time.perf_counter()
    trackers = args.trackers.split(",") if args.trackers else ()
    rows = run_benchmark(suite, out, fusions, adaptations, seeds, progress=not args.quiet,
                         robustness=robustness, executor=_executor(args), trackers=trackers)  # fmt: skip
    summary = summarize(rows)
    command = " ".join(["python", "benchmarks/cross_domain.py", *sys.argv[1:]])
    header = f"# {suite.name}\n\n{suite.description.strip()}\n\nCommand: `{command}`. Metric: {rows[0]['metric']}."
    settings = {"suite": suite.name, "fusions": fusions, "adaptations": adaptations, "seeds": seeds,
                "episodes": episodes, "unimodal": suite.unimodal, "command": command}  # fmt: skip
    record = {"settings": settings, "environment": environment()}
    paths = write_results(rows, summary, out, header, record)
    print(summary_table(summary))
    if imbalance_table(summary):
        print("\nModality imbalance of the source models:\n" + imbalance_table(summary))
    if robustness:
        robust_summary = summarize_robustness(robustness)
        paths.update(write_robustness(robustness, robust_summary, out))
        print("\nSource models on the source test split, each modality missing in turn:")
        print(robustness_table(robust_summary, "source"))
    print(
        f"\n{len(rows)} result rows in {time.perf_counter() - start:.0f} s; wrote "
        + ", ".join(str(p) for p in paths.values())
    )
    if reference is not None and not _compare(rows, reference, args, out):
        sys.exit(1)


if __name__ == "__main__":
    main()
