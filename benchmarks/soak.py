"""Soak test: train the quick config for many steps and watch resident memory.

    python benchmarks/soak.py [--steps 2000] [--every 100] [--warmup 300] [--out runs/soak]

Trains benchmarks/configs/synthetic_quick.yaml without early stopping for --steps steps,
with an evaluation and a checkpoint every 500 steps, and logs the process's RSS every
--every steps. Reports the growth after --warmup steps (the pass mark is under 50 MB) and
writes soak.json beside the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "synthetic_quick.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100, help="log RSS every N steps")
    parser.add_argument("--warmup", type=int, default=300, help="steps before growth is measured")
    parser.add_argument("--limit-mb", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args()

    import datasets
    import transformers

    import multimodal as mm
    from multimodal import engine
    from multimodal.core.provenance import resident_memory_mb
    from multimodal.experiments.config import load_run_config, model_config, train_config

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = load_run_config(CONFIG)
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    start_rss = resident_memory_mb()
    cfg = train_config(
        config, output_dir=str(args.out), max_steps=args.steps, epochs=10**6, patience=None,
        log_every=args.every, eval_every=500, save_every=500, progress=False,
    )  # fmt: skip
    tick = time.perf_counter()
    result = engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)
    seconds = time.perf_counter() - tick
    records = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    series = [(r["step"], r["rss_mb"]) for r in records if "rss_mb" in r]
    after = [rss for step, rss in series if step >= args.warmup]
    base = next(rss for step, rss in series if step >= args.warmup)
    growth = max(after) - base
    report = {
        "steps": result.steps, "seconds": seconds, "rss_before_mb": start_rss, "rss_mb": series,
        "warmup_steps": args.warmup, "rss_at_warmup_mb": base, "rss_last_mb": after[-1],
        "growth_after_warmup_mb": growth, "limit_mb": args.limit_mb, "passed": growth < args.limit_mb,
    }  # fmt: skip
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    print(f"{'step':>6} {'RSS MiB':>9}")
    for step, rss in series:
        print(f"{step:>6} {rss:>9.1f}")
    print(f"{result.steps} steps in {seconds:.0f} s; RSS before training {start_rss:.1f} MiB, "
          f"at step {args.warmup} {base:.1f} MiB, last {after[-1]:.1f} MiB; "
          f"growth after warm-up {growth:+.1f} MiB (limit {args.limit_mb:.0f}): "
          f"{'pass' if report['passed'] else 'FAIL'}")  # fmt: skip


if __name__ == "__main__":
    main()
