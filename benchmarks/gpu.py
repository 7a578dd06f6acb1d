"""One prepared speed check for a lent GPU, under 5 minutes: whole four-modality models at
realistic sizes (BERT-base text encoder, ViT-B/16 image encoder, the audio CNN on 10 s
clips; random init, synthetic batches) with concat, cross_attention and moe fusion, in fp32
and bf16, with and without torch.compile, at each batch size of --batch. Per setting:
training and inference samples/s, peak GPU memory, FLOPs per sample
(torch.utils.flop_counter) and MFU against the device's dense bf16 peak.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget-s 240]
        [--batch 32,128,256] [--peak-tflops T] [--tiny] [--compile-backend inductor|aot_eager|none]
    python benchmarks/gpu.py --e2e [--out benchmarks/results/gpu-e2e.json] [--budget-s 270]

--e2e runs the real-digits transfer protocol (experiments.e2e) with the encoders frozen and
fine-tuned: per stage wall time, rows/s and GPU utilisation, the source fit's loader wait
and the adapted accuracy of each. The data folder is built by make_real_digits.py (apt
espeak-ng and flite); carry benchmarks/data/real-digits to a machine without them.

--tiny runs the synthetic-quick sizes (the test suite runs both modes on CPU so the script
cannot rot). Settings left when --budget-s is spent are listed as skipped; the JSON is
rewritten after every setting, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "results" / "gpu.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # fmt: off
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="(default: benchmarks/results/gpu.json; gpu-e2e.json with --e2e)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting settings after this (default: 240)")
    parser.add_argument("--batch", default="32", help="batch sizes, comma-separated: a sweep (default: 32)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 3 training steps per setting: the top ops by device time and how busy the device was")
    parser.add_argument("--e2e", action="store_true", help="the transfer protocol end to end instead (see above)")
    parser.add_argument("--episodes", type=int, default=1, help="--e2e: k-shot episodes per target (default: 1)")
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

    from multimodal.core.io import write_json_atomic
    from multimodal.core.provenance import environment

    transformers.logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = (
        args.out
        if not (args.e2e and args.out == DEFAULT_OUT)
        else HERE / "results" / "gpu-e2e.json"
    )
    record = {"command": " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment()}  # fmt: skip

    def save(result: dict) -> None:
        write_json_atomic(out, {**result, **record})

    result = e2e(args, device) if args.e2e else matrix(args, device, save)
    save(result)
    print(f"{result['seconds']:.0f} s; wrote {out}")
    return {**result, **record}


def matrix(args: argparse.Namespace, device: str, save: Callable[[dict], None]) -> dict:
    from multimodal.experiments.gpu_speed import device_matrix

    backend = None if args.compile_backend == "none" else args.compile_backend
    result = device_matrix(
        device, realistic=not args.tiny, batch=[int(b) for b in args.batch.split(",")],
        fusions=args.fusions.split(","), precisions=args.precisions.split(","),
        compile_backends=[None, backend] if backend else [None], repeats=args.repeats,
        budget_s=args.budget_s, peak=args.peak_tflops * 1e12 if args.peak_tflops else None, on_row=save,
        profile=args.profile,
    )  # fmt: skip
    print(f"{result['device']}: peak bf16 {result['peak_bf16_flops'] or 'unknown'} FLOP/s")
    print(f"{'fusion':<16}{'precision':<10}{'compile':<10}{'batch':>6}{'train/s':>9}{'infer/s':>9}"
          f"{'train MFU':>10}{'peak MB':>9}")  # fmt: skip
    for r in result["rows"]:
        mfu = "n/a" if r["train_mfu"] is None else f"{r['train_mfu']:.1%}"
        print(f"{r['fusion']:<16}{r['precision']:<10}{r['compile']:<10}{r['batch']:>6}{r['train_samples_per_s']:>9.1f}"
              f"{r['infer_samples_per_s']:>9.1f}{mfu:>10}{r['peak_memory_mb']:>9.0f}")  # fmt: skip
    for r in result["rows"]:
        if "train_profile" in r:
            prof = r["train_profile"]
            top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof["top"][:4])
            print(f"{r['fusion']} {r['precision']} {r['compile']} b{r['batch']}: {prof['clock']} busy "
                  f"{prof['busy_share']:.0%} of the step; {top}")  # fmt: skip
    for s in result["skipped"]:
        print(f"skipped ({s.get('reason', 'budget')}): {s}")
    return result


def e2e(args: argparse.Namespace, device: str) -> dict:
    """The real-digits protocol (--tiny: synthetic-quick at test sizes), frozen and fine-tuned."""
    from multimodal.experiments.e2e import e2e_configs, run_e2e
    from multimodal.experiments.gpu_speed import device_name

    suites = HERE / "suites"
    if args.tiny:
        overrides = {"data": {"options": {"samples_per_domain": 40, "domains": 2, "num_classes": 4, "seed": 0}},
                     "train": {"epochs": 1, "progress": False}, "transfer": {"source": ["d0"], "target": ["d1"]}}  # fmt: skip
        configs = e2e_configs(suites / "synthetic-quick.yaml", None, args.episodes, overrides)
        for config in configs.values():
            config["transfer"].update(adapt={**config["transfer"].get("adapt", {}), "epochs": 1},
                                      scratch={**config["transfer"].get("scratch", {}), "epochs": 1})  # fmt: skip
    else:
        configs = e2e_configs(suites / "real-digits.yaml", "pretrained", args.episodes)
    result = {"device": device_name(device), **run_e2e(configs, device, args.budget_s)}
    print(f"{'arm':<10}{'stage':<16}{'seconds':>9}{'rows/s':>9}{'util %':>8}")
    for name, arm in result["arms"].items():
        for stage, s in arm["stages"].items():
            rate = "-" if s["rows_per_s"] is None else f"{s['rows_per_s']:.0f}"
            util = "-" if s["utilisation"] is None else f"{s['utilisation']:.0f}"
            print(f"{name:<10}{stage:<16}{s['seconds']:>9.1f}{rate:>9}{util:>8}")
        print(f"{name:<10}adapted {arm['adapted_mean']:.3f}; loader wait {arm['source_fit'].get('data_wait_share', 0):.0%} "
              f"of the source fit: {arm['bottleneck']}-bound")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
