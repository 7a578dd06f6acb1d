"""Rank fusions on a suite by source validation metric under a fixed budget (successive
halving: many fusions get a short budget, the best continue with more), then report how
the chosen fusion transfers to the held-out target domains.

    python benchmarks/fusion_search.py [--suite NAME|PATH] [--fusions all|a,b,...]
        [--min-epochs 1] [--eta 2] [--seed 0] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

SUITES = Path(__file__).parent / "suites"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="synthetic-quick")
    parser.add_argument(
        "--fusions", default="all", help="'all' (every registered fusion) or a comma-separated list"
    )
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument(
        "--eta",
        type=int,
        default=2,
        help="keep 1/eta of the fusions per rung; budget grows eta-fold",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the search as JSON here")
    args = parser.parse_args()

    import datasets
    import transformers

    from fusion import list_fusions
    from multimodal.experiments.bench import load_suite, unit_config
    from multimodal.experiments.search import successive_halving
    from multimodal.experiments.transfer import TargetResult, TransferReport

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING)
    path = Path(args.suite) if Path(args.suite).is_file() else SUITES / f"{args.suite}.yaml"
    suite = load_suite(path)
    fusions = list_fusions() if args.fusions == "all" else args.fusions.split(",")
    from multimodal.experiments.bench import plan

    config = unit_config(suite, plan(suite, [fusions[0]], 1)[0])
    config["seed"] = args.seed
    config["train"]["progress"] = False
    result = successive_halving(config, fusions, args.min_epochs, args.eta, suite.fusion_kwargs)
    for i, rung in enumerate(result.rungs):
        ranked = sorted(rung["scores"].items(), key=lambda kv: -kv[1])
        print(
            f"rung {i}: {rung['epochs']} epoch(s): "
            + ", ".join(f"{f} {s:.3f}" for f, s in ranked)
            + f" -> keep {rung['kept']}"
        )
    print(
        f"\nchosen: {result.chosen} (source validation {result.metric}); on the held-out targets:"
    )
    report = dict(result.target)
    report["targets"] = {k: TargetResult(**v) for k, v in report["targets"].items()}
    print(TransferReport(**report).table())
    print(f"\n{result.seconds:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(result.to_dict(), indent=2, default=str))


if __name__ == "__main__":
    main()
