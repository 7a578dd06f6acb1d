"""Speed measurements behind ``benchmarks/speed.py``: wall-clock timings, never asserted in tests."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fusion import create_fusion

_aten = torch.ops.aten


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad, query, key, value)


# torch's FLOP registry knows the CUDA attention kernels but not the CPU flash kernel, so
# without these CPU attention would count as free.
CPU_SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` by ``torch.utils.flop_counter``, CPU attention included."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        step()
    return counter.get_total_flops()


def time_call(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and spread of ``fn``'s wall time in milliseconds (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
    }


def fusion_inputs(
    modality_dims: dict[str, int], batch: int, tokens: int, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    t = {m: torch.randn(batch, tokens, d, generator=g).to(device) for m, d in modality_dims.items()}
    k = {m: torch.ones(batch, tokens, dtype=torch.bool, device=device) for m in modality_dims}
    return t, k


def moe_scaling(
    experts: tuple[int, ...] = (2, 4, 8, 16),
    top_k: int = 2,
    batch: int = 1024,
    dim: int = 256,
    expert_hidden_dim: int = 1024,
    repeats: int = 20,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Forward+backward time of the MoE fusion against the number of experts (same expert size)."""
    dims = {"audio": dim, "image": dim, "text": dim}
    t, k = fusion_inputs(dims, batch, 4, device)
    rows = []
    for n in experts:
        torch.manual_seed(0)
        f = create_fusion(
            "moe", dims, dim, num_experts=n, top_k=top_k, expert_hidden_dim=expert_hidden_dim
        )
        f = f.to(device).train()

        def step(f: torch.nn.Module = f) -> None:
            out = f(t, k)
            (out.fused.square().mean() + out.aux_loss).backward()

        timing = time_call(step, repeats=repeats)
        params = sum(p.numel() for p in f.parameters())
        rows.append({"num_experts": n, "top_k": top_k, "batch": batch, "params": params, **timing})
    base = rows[0]["median_ms"]
    for row in rows:
        row["relative_to_first"] = row["median_ms"] / base
    return rows


def _quick_setup(config_path: str, samples_per_domain: int | None) -> tuple[Any, Any, Any, list]:
    from ..data.collate import RowView
    from ..data.loading import load_dataset
    from .config import RunConfig, load_run_config

    overrides = (
        []
        if samples_per_domain is None
        else [f"data.options.samples_per_domain={samples_per_domain}"]
    )
    run = RunConfig.from_dict(load_run_config(config_path, overrides))
    dsd = load_dataset(run.data)
    view = RowView(dsd["train"], run.data, "train")
    return run, run.data, dsd, [view[i] for i in range(len(view))]


PHASES = ("data", "forward", "backward", "optimizer")


def raw_loop(run: Any, dsd: Any, rows: list, cfg: Any, steps: int, fused: bool,
             phases: dict[str, float] | None = None) -> float:  # fmt: skip
    """Steps/s of a minimal hand-written loop over ``fit``'s batches (same loader, seed and
    optimizer groups); ``phases`` gets the seconds spent loading, forward, backward and in
    the optimizer's step."""
    from ..data.collate import make_loader
    from ..engine import build_optimizer
    from ..modeling.model import build_model

    model = build_model(run.model.to_dict(), rows, seed=0).train()
    optimizer = build_optimizer(model, cfg, fused)
    loader = make_loader(dsd["train"], model, run.data, "train", batch_size=cfg.batch_size,
                         shuffle=True, seed=cfg.seed)  # fmt: skip
    spent = dict.fromkeys(PHASES, 0.0)
    done, epoch, start = 0, 0, time.perf_counter()
    while done < steps:
        loader.sampler.set_epoch(epoch)
        tick = time.perf_counter()
        for batch in loader:
            marks = [time.perf_counter()]
            spent["data"] += marks[0] - tick
            loss = model(batch).loss
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            optimizer.step()
            optimizer.zero_grad()
            marks.append(time.perf_counter())
            for name, (a, b) in zip(PHASES[1:], itertools.pairwise(marks), strict=True):
                spent[name] += b - a
            done += 1
            tick = time.perf_counter()
            if done == steps:
                break
        epoch += 1
    rate = steps / (time.perf_counter() - start)
    if phases is not None:
        phases.update(spent)
    return rate


def fit_vs_raw_loop(
    config_path: str,
    steps: int = 60,
    repeats: int = 3,
    warmup: int = 1,
    samples_per_domain: int | None = 200,
) -> dict[str, Any]:
    """Training steps/s of ``fit`` against a minimal hand-written loop: same model, same
    batches, the same optimizer kernel (fused where ``fit`` fuses it).

    The two alternate ``warmup + repeats`` times, each pair in the other order than the one
    before (CPU timings drift with heat, caches and the machine's other load; the first
    pair runs cold and is discarded). The ratio reported is the median of the per-pair
    ratios, with their minimum and maximum as the spread. Then the raw loop runs once with
    torch's foreach optimizer and once fused, for each one's share of the step.
    """
    from ..engine import FitData, fit
    from ..engine.performance import fused_optimizer
    from ..modeling.model import build_model

    run, spec, dsd, rows = _quick_setup(config_path, samples_per_domain)
    cfg = run.stage(max_steps=steps, patience=None, save_every=None, output_dir=None, progress=False,
                       feature_cache="off", warmup_ratio=0.0)  # fmt: skip
    # No clipping, as in the raw loop (stage() keeps a field given None, so set it here).
    cfg = dataclasses.replace(cfg, max_grad_norm=None)
    fused = fused_optimizer(cfg, "cpu")

    fits: list[Any] = []

    def fit_loop() -> float:
        model = build_model(run.model.to_dict(), rows, seed=0)
        fits.append(fit(model, FitData(spec, dsd["train"]), cfg))
        return fits[-1].train_steps_per_s

    pairs = []
    for i in range(warmup + repeats):
        if i % 2:
            raw_rate = raw_loop(run, dsd, rows, cfg, steps, fused)
            pairs.append((fit_loop(), raw_rate))
        else:
            pairs.append((fit_loop(), raw_loop(run, dsd, rows, cfg, steps, fused)))
    pairs = pairs[warmup:]
    ratios = [f / r for f, r in pairs]
    shares = {}
    for name, kernel in (("foreach", False), ("fused", True)):
        spent: dict[str, float] = {}
        rate = raw_loop(run, dsd, rows, cfg, steps, kernel, spent)
        total = sum(spent.values())
        shares[name] = {"steps_per_s": rate, **{f"{k}_share": v / total for k, v in spent.items()}}
    return {
        "fit_steps_per_s": [f for f, _ in pairs],
        "raw_steps_per_s": [r for _, r in pairs],
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "steps": steps,
        "batch_size": cfg.batch_size,
        "train_rows": len(dsd["train"]),
        "parameters": fits[-1].total_parameters,
        "fused_optimizer": fused,
        "optimizer_kernels": shares,
    }


def matmul_gflops(device: str = "cpu", rows: int = 8192, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of one [rows, 256] x [256, 768] fp32 matrix product (the shape of a fusion's
    QKV projection at batch 64), median and best of ``repeats``: the rate the attention
    fusions' GEMMs work against."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, 256, generator=g).to(device)
    b = torch.randn(256, 768, generator=g).to(device)
    timing = time_call(lambda: a @ b, repeats=repeats)
    flops = 2 * rows * 256 * 768
    return {"median": flops / timing["median_ms"] / 1e6, "best": flops / timing["min_ms"] / 1e6}


def feature_cache_speedup(
    config_path: str, epochs: int = 3, samples_per_domain: int = 200
) -> dict[str, Any]:
    """Epoch times under strategy=head with and without the feature cache."""
    from ..engine import FitData, fit
    from ..modeling.model import build_model

    run, spec, dsd, rows = _quick_setup(config_path, samples_per_domain)
    out: dict[str, Any] = {}
    for mode in ("off", "memory"):
        cfg = run.stage(strategy="head", epochs=epochs, feature_cache=mode, patience=None, save_every=None,
                           output_dir=None, progress=False)  # fmt: skip
        model = build_model(run.model.to_dict(), rows, seed=0)
        start = time.perf_counter()
        result = fit(model, FitData(spec, dsd["train"]), cfg)
        out[mode] = {
            "epoch_seconds": result.epoch_seconds,
            "total_seconds": time.perf_counter() - start,
        }
    later_off = statistics.mean(out["off"]["epoch_seconds"][1:])
    later_on = statistics.mean(out["memory"]["epoch_seconds"][1:])
    out["speedup_from_second_epoch"] = later_off / later_on
    out["speedup_total"] = out["off"]["total_seconds"] / out["memory"]["total_seconds"]
    return out


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def fusion_throughput(
    batch: int = 64,
    dim: int = 256,
    repeats: int = 10,
    device: str = "cpu",
    fusions: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Training (forward+backward+AdamW) and inference samples/s of every fusion on encoder-sized
    token inputs: text 32 x 768, image 49 x 512, audio 50 x 512, tabular 1 x 64 (bf16 on GPU)."""
    from fusion import list_fusions

    shapes = {"audio": (50, 512), "image": (49, 512), "tabular": (1, 64), "text": (32, 768)}
    g = torch.Generator().manual_seed(0)
    tokens = {m: torch.randn(batch, t, d, generator=g).to(device) for m, (t, d) in shapes.items()}
    masks = {
        m: torch.ones(batch, t, dtype=torch.bool, device=device) for m, (t, _) in shapes.items()
    }
    masks["text"][:, 20:] = False
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    rows = []
    for name in fusions or list_fusions():
        torch.manual_seed(0)
        f = create_fusion(name, {m: d for m, (_, d) in shapes.items()}, dim).to(device)
        opt = torch.optim.AdamW(f.parameters(), lr=1e-4, foreach=True)

        def train_step(f: torch.nn.Module = f, opt: torch.optim.Optimizer = opt) -> None:
            f.train()
            with autocast:
                out = f(tokens, masks)
                loss = out.fused.float().square().mean() + (
                    out.aux_loss if out.aux_loss is not None else 0
                )
            loss.backward()
            opt.step()
            opt.zero_grad()

        @torch.no_grad()
        def infer(f: torch.nn.Module = f) -> None:
            f.eval()
            with autocast:
                f(tokens, masks)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train = time_call(train_step, repeats=repeats)
        inference = time_call(infer, repeats=repeats)
        flops = count_flops(infer) / batch
        train_flops = count_flops(train_step) / batch
        infer_rate, train_rate = (batch / t["median_ms"] * 1e3 for t in (inference, train))
        rows.append({
            "fusion": name, "params": sum(p.numel() for p in f.parameters()), "batch": batch,
            "gflops_per_sample": flops / 1e9, "train_gflops_per_sample": train_flops / 1e9,
            "train_samples_per_s": train_rate, "train_gflops_per_s": train_flops * train_rate / 1e9,
            "infer_samples_per_s": infer_rate, "infer_gflops_per_s": flops * infer_rate / 1e9,
            "peak_memory_mb": peak_memory_mb(device),
        })  # fmt: skip
    return rows


def model_throughput(
    device: str = "cpu", batch: int = 32, repeats: int = 5, realistic: bool | None = None
) -> dict[str, Any]:
    """Samples/s of a whole four-modality model (forward+backward, and inference) per fusion.

    ``realistic`` (default on GPU): BERT-base-sized text (12 x 768), ViT-S/16 at 224 px,
    a CNN10 audio encoder on 10 s clips, bf16 autocast. Otherwise the synthetic-quick sizes.
    """
    from ..modeling.model import build_model, move_to

    realistic = device == "cuda" if realistic is None else realistic
    encoders, samples = throughput_inputs(realistic, batch)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    rows = []
    for name in ("concat", "cross_attention", "moe"):
        config = {"encoders": encoders, "fusion": {"name": name, "dim": 256}, "head": {"task": "classification", "num_classes": 4}}  # fmt: skip
        model = build_model(config, samples, seed=0).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        batch_tensors = move_to(model.preprocess(samples), device)

        def train_step(
            model: torch.nn.Module = model,
            opt: torch.optim.Optimizer = opt,
            batch_tensors: dict = batch_tensors,
        ) -> None:
            model.train()
            with autocast:
                loss = model(batch_tensors).loss
            loss.backward()
            opt.step()
            opt.zero_grad()

        @torch.no_grad()
        def infer(model: torch.nn.Module = model, batch_tensors: dict = batch_tensors) -> None:
            model.eval()
            with autocast:
                model(batch_tensors)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train = time_call(train_step, repeats=repeats, warmup=2)
        inference = time_call(infer, repeats=repeats, warmup=2)
        rows.append({
            "fusion": name, "params": sum(p.numel() for p in model.parameters()), "batch": batch,
            "train_samples_per_s": batch / train["median_ms"] * 1e3, "infer_samples_per_s": batch / inference["median_ms"] * 1e3,
            "peak_memory_mb": peak_memory_mb(device),
        })  # fmt: skip
    return {
        "realistic": realistic,
        "precision": "bf16" if device == "cuda" else "fp32",
        "rows": rows,
    }


def throughput_inputs(realistic: bool, batch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Encoder configs and one batch of raw samples: realistic sizes, or synthetic-quick's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    if realistic:
        text = {"name": "hf_text", "config": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "vocab_size": 30522}, "max_length": 128}  # fmt: skip
        image = {"name": "timm_image", "model_name": "vit_small_patch16_224"}
        audio = {"name": "audio_cnn", "sample_rate": 16000, "max_seconds": 10.0}
        seconds, rate, words = 10.0, 16000, 100
    else:
        text = {"name": "hf_text", "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "vocab_size": 400}, "max_length": 32}  # fmt: skip
        image = {"name": "timm_image", "model_name": "resnet10t", "img_size": 32}
        audio = {
            "name": "audio_cnn",
            "channels": [8, 16, 32],
            "sample_rate": 8000,
            "n_mels": 32,
            "n_fft": 256,
            "hop_length": 128,
        }
        seconds, rate, words = 0.5, 8000, 12
    vocabulary = [f"w{i}" for i in range(500)]
    samples = [{
        "text": " ".join(rng.choice(vocabulary, words)), "image": Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)),
        "audio": {"array": rng.standard_normal(int(seconds * rate)).astype(np.float32), "sampling_rate": rate},
        "tabular": {"x0": float(rng.normal()), "x1": float(rng.normal())}, "label": int(rng.integers(0, 4)),
    } for _ in range(batch)]  # fmt: skip
    encoders = {"text": text, "image": image, "audio": audio,
                "tabular": {"name": "tabular_mlp", "numerical": ["x0", "x1"]}}  # fmt: skip
    return encoders, samples
