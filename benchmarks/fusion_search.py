"""Search fusions and their hyperparameters on a suite's source domains with Optuna (TPE
sampling, successive-halving pruning on the source validation metric), then report how
the chosen configuration transfers to the held-out target domains.

    python benchmarks/fusion_search.py [--suite NAME|PATH] [--fusions all|a,b,...]
        [--trials 20] [--space SPACE.yaml] [--min-epochs 1] [--max-epochs N] [--eta 2]
        [--pruner sha|hyperband|none] [--storage sqlite:///search.db] [--study-name NAME]
        [--seed 0] [--out results.json]

Many machines search one study when they run the same command with one --storage (an RDB
URL: sqlite for one machine or a shared file system, PostgreSQL or MySQL for a cluster);
each adds --trials trials and reports the study's best so far. --space is a YAML mapping
of fusion keyword -> {choices: [...]} or {low: A, high: B, log: false}; each fusion samples
the keywords its constructor takes (default: dim, depth, num_heads, num_experts, top_k,
rank, dropout).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

SUITES = Path(__file__).parent / "suites"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # fmt: off
    parser.add_argument("--suite", default="synthetic-quick", help="(default: synthetic-quick)")
    parser.add_argument("--fusions", default="all", help="'all' (every registered fusion) or a comma-separated list")
    parser.add_argument("--trials", type=int, default=20, help="trials run here (default: 20)")
    parser.add_argument("--space", type=Path, help="a YAML search space (default: the built-in one)")
    parser.add_argument("--min-epochs", type=int, default=1, help="epochs before pruning can stop a trial (default: 1)")
    parser.add_argument("--max-epochs", type=int, help="epochs of a full trial (default: the suite's train.epochs)")
    parser.add_argument("--eta", type=int, default=2, help="the pruner keeps 1/eta of the trials per rung (default: 2)")
    parser.add_argument("--pruner", default="sha", choices=["sha", "hyperband", "none"], help="(default: sha)")
    parser.add_argument("--storage", help="an Optuna RDB URL shared by every searching process (default: in memory)")
    parser.add_argument("--study-name", default="fusion-search", help="(default: fusion-search)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--out", type=Path, help="write the search as JSON here")
    # fmt: on
    return parser


def main() -> None:
    args = build_parser().parse_args()

    import datasets
    import optuna
    import transformers

    from fusion import list_fusions
    from multimodal.core.config import read_yaml
    from multimodal.experiments.bench import load_suite, plan, unit_config
    from multimodal.experiments.search import fusion_search
    from multimodal.experiments.transfer import TransferReport

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    path = Path(args.suite) if Path(args.suite).is_file() else SUITES / f"{args.suite}.yaml"
    suite = load_suite(path)
    fusions = list_fusions() if args.fusions == "all" else args.fusions.split(",")
    config = unit_config(suite, plan(suite, [fusions[0]], 1)[0])
    config["seed"] = args.seed
    config["train"]["progress"] = False
    result = fusion_search(
        config, fusions, trials=args.trials, space=read_yaml(args.space) if args.space else None,
        fusion_kwargs=suite.fusion_kwargs, max_epochs=args.max_epochs, min_epochs=args.min_epochs,
        eta=args.eta, pruner=args.pruner, storage=args.storage, study_name=args.study_name,
    )  # fmt: skip
    print(
        f"{'trial':>5}  {'state':8}  {'epochs':>6}  {result.metric:>8}  fusion and hyperparameters"
    )
    for t in result.trials:
        value = "" if t["value"] is None else f"{t['value']:.3f}"
        print(
            f"{t['number']:>5}  {t['state']:8}  {t['epochs'] or '':>6}  {value:>8}  {t['fusion']} {t['params']}"
        )
    print(f"\nchosen: {result.chosen} {result.params} (source validation {result.metric} "
          f"{result.value:.3f}); on the held-out targets:")  # fmt: skip
    print(TransferReport.from_dict(dict(result.target)).table())
    print(f"\n{result.seconds:.0f} s")
    if args.out:
        from multimodal.core.provenance import environment

        command = " ".join(["python", "benchmarks/fusion_search.py", *sys.argv[1:]])
        record = {**result.to_dict(), "command": command, "environment": environment()}
        args.out.write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
