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
