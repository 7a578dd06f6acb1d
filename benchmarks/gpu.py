"""One prepared speed check for a lent GPU, under 5 minutes: whole four-modality models at
realistic sizes (BERT-base text encoder, ViT-B/16 image encoder, the audio CNN on 10 s
clips; random init, synthetic batches) with concat, cross_attention and moe fusion, in fp32
and bf16, with and without torch.compile. Per setting: training and inference samples/s,
peak GPU memory, FLOPs per sample (torch.utils.flop_counter) and MFU against the device's
dense bf16 peak.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget-s 240]
        [--batch 32] [--peak-tflops T] [--tiny] [--compile-backend inductor|aot_eager|none]

--tiny runs the synthetic-quick sizes (the test suite runs it on CPU so the script cannot
rot). Settings left when --budget-s is spent are listed as skipped in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # fmt: off
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json", help="(default: benchmarks/results/gpu.json)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting settings after this (default: 240)")
    parser.add_argument("--batch", type=int, default=32, help="(default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (default: 5)")
    parser.add_argument("--fusions", default="concat,cross_attention,moe", help="(default: concat,cross_attention,moe)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    parser.add_argument("--precisions", default="fp32,bf16", help="(default: fp32,bf16)")
    parser.add_argument("--tiny", action="store_true", help="synthetic-quick sizes instead of realistic ones")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend, or none (default: inductor)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    # fmt: on
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch
    import transformers

    from multimodal.core.provenance import environment
    from multimodal.experiments.gpu_speed import device_matrix

    transformers.logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = None if args.compile_backend == "none" else args.compile_backend
    result = device_matrix(
        device, realistic=not args.tiny, batch=args.batch, fusions=args.fusions.split(","),
        precisions=args.precisions.split(","), compile_backends=[None, backend] if backend else [None],
        repeats=args.repeats, budget_s=args.budget_s,
        peak=args.peak_tflops * 1e12 if args.peak_tflops else None,
    )  # fmt: skip
    result["command"] = " ".join(
        ["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]
    )
    result["environment"] = environment()
    print(f"{result['device']}: peak bf16 {result['peak_bf16_flops'] or 'unknown'} FLOP/s")
    print(
        f"{'fusion':<16}{'precision':<10}{'compile':<10}{'train/s':>9}{'infer/s':>9}{'train MFU':>10}{'peak MB':>9}"
    )
    for r in result["rows"]:
        mfu = "n/a" if r["train_mfu"] is None else f"{r['train_mfu']:.1%}"
        print(f"{r['fusion']:<16}{r['precision']:<10}{r['compile']:<10}{r['train_samples_per_s']:>9.1f}"
              f"{r['infer_samples_per_s']:>9.1f}{mfu:>10}{r['peak_memory_mb']:>9.0f}")  # fmt: skip
    for s in result["skipped"]:
        print(f"skipped (budget): {s}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{result['seconds']:.0f} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
