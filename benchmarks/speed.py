"""Speed tables: fusion modules alone, whole models, MoE time against the number of
experts, ``fit`` against a hand-written loop, the feature cache, and fits on cached features
(episodes): a k-shot head fit against a bare loop, and 32 episodes trained together against 1.

python benchmarks/speed.py [--only fusions|models|moe|fit|finetune|cache|episodes] [--fusions a,b]
    [--pairs 5] [--out benchmarks/results/speed.json]

With --out, the sections run are written into the file and the others already in it are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from multimodal.core.provenance import cpu_model
from multimodal.experiments.speed import (
    feature_cache_speedup,
    fit_vs_raw_loop,
    fusion_throughput,
    matmul_gflops,
    model_throughput,
    moe_scaling,
)

SECTIONS = ("fusions", "models", "moe", "fit", "finetune", "cache", "episodes")
QUICK = str(Path(__file__).parent / "configs" / "synthetic_quick.yaml")
FINETUNE = str(Path(__file__).parent / "configs" / "finetune_cpu.yaml")


def _table(rows: list[dict], title: str) -> None:
    """Columns absent from the rows (FLOPs of whole models, ceilings) print as '-'."""
    print(title)
    print(
        f"{'fusion':<18} {'params':>12} {'GFLOP/sample':>13} {'train samples/s':>16} {'train GFLOP/s':>14} "
        f"{'ceiling':>8} {'infer samples/s':>16} {'infer GFLOP/s':>14} {'peak MB':>9}"
    )

    def cell(r: dict, key: str, spec: str) -> str:
        return format(r[key], spec) if key in r else "-"

    for r in rows:
        print(
            f"{r['fusion']:<18} {r['params']:>12,} {cell(r, 'gflops_per_sample', '.4f'):>13} "
            f"{r['train_samples_per_s']:>16.1f} {cell(r, 'train_gflops_per_s', '.1f'):>14} "
            f"{cell(r, 'train_ceiling_samples_per_s', '.0f'):>8} {r['infer_samples_per_s']:>16.1f} "
            f"{cell(r, 'infer_gflops_per_s', '.1f'):>14} {r['peak_memory_mb']:>9.0f}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # fmt: off
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fusions", help="fusions section: these only, comma-separated (default: all)")
    parser.add_argument("--pairs", type=int, default=5, help="fit, finetune and episodes sections: timed pairs (default: 5)")
    parser.add_argument("--finetune-steps", type=int, default=40, help="finetune section: steps per timed run (default: 40)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (other sections in it are kept)")
    # fmt: on
    return parser


def _fusions(args: argparse.Namespace, device: str, results: dict) -> None:
    rows = fusion_throughput(
        device=device, fusions=args.fusions.split(",") if args.fusions else None
    )
    matmul = matmul_gflops(device)
    for r in rows:  # what a step would reach if all its FLOPs ran at the best matmul rate
        r["train_ceiling_samples_per_s"] = matmul["best"] / r["train_gflops_per_sample"]
    results["fusions"] = rows
    results["matmul_gflops_per_s"] = matmul["median"]
    results["matmul_best_gflops_per_s"] = matmul["best"]
    _table(rows, f"fusion modules alone, batch {rows[0]['batch']}, encoder-sized tokens ({device})")
    print(
        f"one [8192, 256] x [256, 768] fp32 matrix product: {matmul['median']:.1f} GFLOP/s median, "
        f"{matmul['best']:.1f} best; ceiling = training samples/s if every FLOP ran at the best rate\n"
    )


def _models(args: argparse.Namespace, device: str, results: dict) -> None:
    r = results["models"] = model_throughput(device=device)
    size = ("realistic encoder sizes (BERT-base, ViT-S/16, CNN10 on 10 s audio)" if r["realistic"]
            else "synthetic-quick encoder sizes")  # fmt: skip
    _table(
        r["rows"],
        f"whole model, {size}, {r['precision']}, batch {r['rows'][0]['batch']} ({device})",
    )
    print()


def _moe(args: argparse.Namespace, device: str, results: dict) -> None:
    rows = results["moe"] = moe_scaling(repeats=args.repeats, device=device)
    print(
        f"MoE fusion, forward+backward, top-{rows[0]['top_k']}, batch {rows[0]['batch']}, same expert size ({device})"
    )
    print(f"{'experts':>8} {'params':>10} {'median ms':>10} {'p90 ms':>8} {'x vs 2':>7}")
    for r in rows:
        print(
            f"{r['num_experts']:>8} {r['params']:>10,} {r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['relative_to_first']:>7.2f}"
        )


def _fit(args: argparse.Namespace, device: str, results: dict) -> None:
    r = results["fit_vs_raw_loop"] = fit_vs_raw_loop(QUICK, repeats=args.pairs)
    print(
        f"\nfit vs raw loop ({r['steps']} steps x {len(r['ratios'])}, synthetic_quick model, same batches)"
    )
    for f, w, q in zip(r["fit_steps_per_s"], r["raw_steps_per_s"], r["ratios"], strict=True):
        print(f"  fit {f:.2f} steps/s, raw {w:.2f} steps/s, ratio {q:.3f}")
    print(f"  median ratio {r['ratio']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")


def _finetune(args: argparse.Namespace, device: str, results: dict) -> None:
    r = results["finetune_vs_raw_loop"] = fit_vs_raw_loop(
        FINETUNE, steps=args.finetune_steps, repeats=args.pairs, samples_per_domain=None
    )
    print(f"\nfull fine-tune, MiniLM + resnet18 + tabular MLP ({r['parameters'] / 1e6:.1f}M parameters, "
          f"{r['train_rows']} rows, batch {r['batch_size']}): fit vs raw loop, {r['steps']} steps x {len(r['ratios'])}")  # fmt: skip
    for f, w, q in zip(r["fit_steps_per_s"], r["raw_steps_per_s"], r["ratios"], strict=True):
        print(f"  fit {f:.3f} steps/s, raw {w:.3f} steps/s, ratio {q:.3f}")
    print(f"  median ratio {r['ratio']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")
    for name, k in r["optimizer_kernels"].items():
        shares = ", ".join(
            f"{p} {k[f'{p}_share']:.1%}" for p in ("data", "forward", "backward", "optimizer")
        )
        print(f"  raw loop, {name} AdamW: {k['steps_per_s']:.3f} steps/s; {shares}")


def _cache(args: argparse.Namespace, device: str, results: dict) -> None:
    r = results["feature_cache"] = feature_cache_speedup(QUICK)
    print("\nstrategy=head epoch seconds (synthetic_quick model)")
    for mode in ("off", "memory"):
        epochs = ", ".join(f"{t:.2f}" for t in r[mode]["epoch_seconds"])
        print(f"  cache {mode:<6}: {epochs}  (whole fit {r[mode]['total_seconds']:.1f} s)")
    print(
        f"  speed-up from the second epoch: {r['speedup_from_second_epoch']:.1f}x; whole fit: {r['speedup_total']:.1f}x"
    )


def _episodes(args: argparse.Namespace, device: str, results: dict) -> None:
    """On the main job's data and encoders (pretrained, frozen, their outputs cached)."""
    from multimodal.experiments.episode_speed import batched_episodes, kshot_fit_vs_raw_loop
    from multimodal.experiments.transfer.plan import PROGRESS_ENV

    os.environ.setdefault(PROGRESS_ENV, "0")  # the plans' stage bars would only print noise

    r = results.setdefault("episodes", {})["kshot_fit_vs_raw_loop"] = kshot_fit_vs_raw_loop(
        pairs=args.pairs
    )
    print(f"\nk-shot head fit on cached features ({r['suite']} {r['fusion']}, {r['rows']} rows, "
          f"{r['epochs']} epochs of batch {r['batch_size']}: {r['steps']} steps, {r['evaluations']} "
          f"evaluations on {r['validation_rows']} rows) against a bare torch loop doing the same")  # fmt: skip
    for f, w, q in zip(r["fit_s"], r["raw_s"], r["ratios"], strict=True):
        print(f"  fit {f:.3f} s, bare loop {w:.3f} s, ratio {q:.2f}")
    print(f"  median ratio {r['ratio']:.2f} (min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f})")
    fusions = args.fusions.split(",") if args.fusions else ["concat", "cross_attention", "moe"]
    rows = results["episodes"]["batched"] = [
        batched_episodes(fusion=f, pairs=args.pairs) for f in fusions
    ]
    print(f"\n32 episodes trained together against 1 (the main job's scratch fits: {rows[0]['rows']} rows, "
          f"{rows[0]['epochs']} epochs of batch {rows[0]['batch_size']})")  # fmt: skip
    for r in rows:
        print(f"  {r['fusion']:<16} 1: {statistics.median(r['one_s']):.3f} s, 32: "
              f"{statistics.median(r['many_s']):.3f} s, ratio {r['ratio']:.2f} "
              f"(min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f}); {r['mode']}")  # fmt: skip
        sizes = ", ".join(f"{n}: {statistics.median(v):.3f} s" for n, v in r["scaling_s"].items())
        print(f"  {'':<16} together {sizes}: {r['fixed_s'] * 1000:.0f} ms + "
              f"{r['per_episode_s'] * 1000:.1f} ms an episode; {r['episodes']} x that part alone "
              f"{r['per_episodes_alone_ratio']:.2f}x one episode")  # fmt: skip


RUNNERS = {"fusions": _fusions, "models": _models, "moe": _moe, "fit": _fit, "finetune": _finetune,
           "cache": _cache, "episodes": _episodes}  # fmt: skip


def main() -> None:
    args = _parser().parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"device": device, "torch": torch.__version__, "cpu": cpu_model(),
                     "threads": torch.get_num_threads()}  # fmt: skip
    for section in SECTIONS:
        if section in (args.only or SECTIONS):
            RUNNERS[section](args, device, results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps(_merged(kept, results), indent=2) + "\n")
        print(f"wrote {args.out}")


MACHINE = ("device", "torch", "cpu", "threads")


def _merged(kept: dict, results: dict) -> dict:
    """The sections run now over those kept; ``machines`` says which machine measured each
    section (a kept section without an entry: the machine the file named before)."""
    before = {k: kept[k] for k in MACHINE if k in kept}
    machines = {s: before for s in kept if s not in MACHINE and s != "machines"}
    machines.update(kept.get("machines", {}))
    machines.update({s: {k: results[k] for k in MACHINE} for s in results if s not in MACHINE})
    return {**kept, **results, "machines": machines}


if __name__ == "__main__":
    main()
