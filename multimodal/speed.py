"""Speed measurements behind ``benchmarks/speed.py``: wall-clock timings, never asserted in tests."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from fusion import create_fusion


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


def _quick_setup(
    config_path: str, samples_per_domain: int
) -> tuple[dict[str, Any], Any, Any, list]:
    from .config import load_run_config
    from .data import DatasetSpec, RowView, load_dataset

    config = load_run_config(config_path, [f"data.options.samples_per_domain={samples_per_domain}"])
    spec = DatasetSpec.from_dict(config["data"])
    dsd = load_dataset(spec)
    view = RowView(dsd["train"], spec, "train")
    return config, spec, dsd, [view[i] for i in range(len(view))]


def fit_vs_raw_loop(
    config_path: str,
    steps: int = 60,
    repeats: int = 3,
    warmup: int = 1,
    samples_per_domain: int = 200,
) -> dict[str, Any]:
    """Training steps/s of ``fit`` against a minimal hand-written loop: same model, same batches.

    The two alternate ``warmup + repeats`` times (CPU timings drift with heat and caches;
    the first pair runs cold and is discarded); the ratio reported is the median of the
    per-pair ratios.
    """
    from .config import model_config, train_config
    from .data import make_loader
    from .model import build_model
    from .training import FitData, build_optimizer, fit

    config, spec, dsd, rows = _quick_setup(config_path, samples_per_domain)
    cfg = train_config(config, max_steps=steps, patience=None, save_every=None, output_dir=None, progress=False,
                       feature_cache="off", max_grad_norm=None, warmup_ratio=0.0)  # fmt: skip

    def raw_loop() -> float:
        model = build_model(model_config(config), rows, seed=0).train()
        optimizer = build_optimizer(model, cfg)
        loader = make_loader(
            dsd["train"],
            model,
            spec,
            "train",
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
        )
        done, epoch, start = 0, 0, time.perf_counter()
        while done < steps:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                model(batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                done += 1
                if done == steps:
                    break
            epoch += 1
        return steps / (time.perf_counter() - start)

    pairs = []
    for _ in range(warmup + repeats):
        model = build_model(model_config(config), rows, seed=0)
        fit_rate = fit(model, FitData(spec, dsd["train"]), cfg).train_steps_per_s
        pairs.append((fit_rate, raw_loop()))
    pairs = pairs[warmup:]
    ratios = [f / r for f, r in pairs]
    return {
        "fit_steps_per_s": [f for f, _ in pairs],
        "raw_steps_per_s": [r for _, r in pairs],
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "steps": steps,
    }


def feature_cache_speedup(
    config_path: str, epochs: int = 3, samples_per_domain: int = 200
) -> dict[str, Any]:
    """Epoch times under strategy=head with and without the feature cache."""
    from .config import model_config, train_config
    from .model import build_model
    from .training import FitData, fit

    config, spec, dsd, rows = _quick_setup(config_path, samples_per_domain)
    out: dict[str, Any] = {}
    for mode in ("off", "memory"):
        cfg = train_config(config, strategy="head", epochs=epochs, feature_cache=mode, patience=None, save_every=None,
                           output_dir=None, progress=False)  # fmt: skip
        model = build_model(model_config(config), rows, seed=0)
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
