"""Source-training wall time of each modality-balancing method, measured side by side.

    python benchmarks/balance_timing.py [--fusions concat,late] [--rounds 2] [--out FILE]

Trains the synthetic-imbalance suite's source model (domain d0, its train and validation
splits, seed 0) once per method per round, the methods interleaved within a round, and
reports the fastest time of each and its ratio to ``none``. On a shared machine only the
ratios measured in one run mean anything.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("none", "ogm_ge", "grad_blend", "unimodal_aux")


def time_fusion(fusion: str, rounds: int) -> dict:
    import multimodal as mm
    from multimodal import engine
    from multimodal.data.collate import RowView
    from multimodal.experiments.bench import load_suite
    from multimodal.experiments.config import RunConfig

    suite = load_suite(ROOT / "benchmarks/suites/synthetic-imbalance.yaml")
    fusion_config = {**suite.base["fusion"], "name": fusion, **suite.fusion_kwargs.get(fusion, {})}
    run = RunConfig.from_dict({**suite.base, "fusion": fusion_config})
    dsd = mm.load_dataset(run.data)
    source = {s: mm.select_domains(dsd[s], "d0") for s in dsd}
    view = RowView(source["train"], run.data, "train")
    rows = [view[i] for i in range(len(view))]
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method in METHODS:
            model = mm.build_model(run.model.to_dict(), rows, seed=0)
            tick = time.perf_counter()
            engine.fit(model, engine.FitData(run.data, source["train"], source["validation"]),
                       run.stage(balance=method, seed=0))  # fmt: skip
            seconds[method].append(time.perf_counter() - tick)
    best = {m: min(v) for m, v in seconds.items()}
    return {"fusion": fusion, "seconds": seconds, "fastest": best,
            "ratio_to_none": {m: best[m] / best["none"] for m in METHODS}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fusions", default="concat,late", help="comma-separated fusions (default: concat,late)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks/results/synthetic-imbalance/timing.json",
        help="JSON file (default: benchmarks/results/synthetic-imbalance/timing.json)",
    )
    args = parser.parse_args()
    import datasets
    import transformers

    from multimodal.core.io import write_json_atomic
    from multimodal.core.provenance import environment

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.ERROR)
    results = [time_fusion(f, args.rounds) for f in args.fusions.split(",")]
    for r in results:
        print(
            r["fusion"]
            + ": "
            + ", ".join(
                f"{m} {r['fastest'][m]:.1f} s ({r['ratio_to_none'][m]:.2f}x)" for m in METHODS
            )
        )
    write_json_atomic(
        args.out, {"results": results, "rounds": args.rounds, "environment": environment()}
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
