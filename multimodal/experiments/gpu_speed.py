"""The measurements behind ``benchmarks/gpu.py``: whole four-modality models at realistic
sizes (BERT-base text, ViT-B/16 image, the audio CNN, random init, synthetic batches), per
fusion x precision x compile: training and inference samples/s, peak memory, FLOPs counted
by ``torch.utils.flop_counter`` and the model FLOP utilisation against the device's peak."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .speed import count_flops, peak_memory_mb, throughput_inputs, time_call

# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989.4e12, "H100": 989.4e12, "GH200": 989.4e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165.2e12, "V100": 125e12,
}  # fmt: skip


@dataclass
class Sizes:
    """Encoder sizes and batch: ``realistic`` (BERT-base, ViT-B/16 at 224 px, 10 s audio)
    or ``tiny`` (the test suite's CPU sizes)."""

    batch: int
    encoders: dict[str, Any]
    samples: list[dict[str, Any]] = field(repr=False)


def sizes(realistic: bool, batch: int) -> Sizes:
    encoders, samples = throughput_inputs(realistic, batch)
    if realistic:
        encoders["image"] = {"name": "timm_image", "model_name": "vit_base_patch16_224"}
    return Sizes(batch, encoders, samples)


def device_name(device: str) -> str:
    """The GPU's name (torch.cuda.get_device_name), or "cpu"."""
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def peak_flops(device: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak FLOP/s: ``override``, else from its name (None on CPU
    or for a device not in ``PEAK_BF16_FLOPS``)."""
    if override:
        return override
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def measure(model: torch.nn.Module, batch: dict[str, Any], size: int, device: str, precision: str,
            compile_backend: str | None, repeats: int, peak: float | None,
            profile: bool = False) -> dict[str, Any]:  # fmt: skip
    """One configuration: train (forward, backward, AdamW) and inference samples/s, FLOPs
    per sample of each, MFU and peak memory; with ``profile``, where a training step's
    device time goes (``op_profile``)."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as fit steps it
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model

    def train_step(run: Any = forward) -> None:
        model.train()
        with autocast:
            loss = run(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(run: Any = forward) -> None:
        model.eval()
        with autocast:
            run(batch)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    train_step(), infer()  # the first calls compile
    first_s = time.perf_counter() - tick
    train, inference = (
        time_call(train_step, repeats=repeats, warmup=2),
        time_call(infer, repeats=repeats, warmup=2),
    )
    # Counted on the eager model: compiling changes the kernels, not the arithmetic.
    flops = {
        "train": count_flops(lambda: train_step(model)),
        "infer": count_flops(lambda: infer(model)),
    }
    row = {"precision": precision, "compile": compile_backend or "off", "batch": size, "first_call_s": first_s,
           "train_samples_per_s": size / train["median_ms"] * 1e3, "infer_samples_per_s": size / inference["median_ms"] * 1e3,
           "train_gflops_per_sample": flops["train"] / size / 1e9, "infer_gflops_per_sample": flops["infer"] / size / 1e9,
           "peak_memory_mb": peak_memory_mb(device)}  # fmt: skip
    for kind, timing in (("train", train), ("infer", inference)):
        achieved = flops[kind] / (timing["median_ms"] / 1e3)
        row[f"{kind}_tflops"] = achieved / 1e12
        row[f"{kind}_mfu"] = achieved / peak if peak else None
    if profile:
        row["train_profile"] = op_profile(train_step, device)
    return row


def op_profile(step: Any, device: str, steps: int = 3, top: int = 12) -> dict[str, Any]:
    """``steps`` calls of ``step`` under torch.profiler: the ops taking the most self time
    on the device (the CPU without CUDA), each one's share, and the share of the wall time
    the device was busy at all (low: the host, launching kernels one by one, sets the pace;
    what torch.compile and larger batches fix)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profiler(activities=activities) as prof:
        tick = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - tick) * 1e6
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    busy = sum(getattr(e, key) for e in events)
    return {
        "clock": "device" if cuda else "cpu", "wall_ms_per_step": wall_us / 1e3 / steps,
        "busy_ms_per_step": busy / 1e3 / steps, "busy_share": busy / wall_us if wall_us else None,
        "top": [{"op": e.key, "ms_per_step": getattr(e, key) / 1e3 / steps, "share": getattr(e, key) / busy,
                 "calls_per_step": e.count / steps} for e in events[:top]],
    }  # fmt: skip


def device_matrix(device: str, realistic: bool, batch: int | list[int], fusions: list[str], precisions: list[str],
                  compile_backends: list[str | None], repeats: int = 5, budget_s: float | None = None,
                  peak: float | None = None, on_row: Any = None, profile: bool = False) -> dict[str, Any]:  # fmt: skip
    """Every compile x precision x fusion x batch size setting, in that order, until
    ``budget_s`` is spent (the first always runs; the rest are listed as skipped, never
    silently dropped); a batch that runs out of memory is listed with the reason.
    ``on_row(result)`` is called after each setting, so a run cut short keeps its rows."""
    batches = [batch] if isinstance(batch, int) else list(batch)
    peak = peak_flops(device, peak)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "device": device_name(device), "peak_bf16_flops": peak,
        "realistic": realistic, "encoders": sizes(realistic, batches[0]).encoders, "rows": [], "skipped": [],
    }  # fmt: skip
    for backend in compile_backends:  # uncompiled first: compiling is what may not fit the budget
        for precision in precisions:
            for name in fusions:
                for size in batches:
                    setting = {
                        "fusion": name,
                        "precision": precision,
                        "compile": backend or "off",
                        "batch": size,
                    }
                    if (
                        budget_s is not None
                        and result["rows"]
                        and time.perf_counter() - start > budget_s
                    ):
                        result["skipped"].append(setting)
                        continue
                    try:
                        result["rows"].append({**setting, **_one_setting(device, realistic, size, name, precision,
                                                                          backend, repeats, peak, profile)})  # fmt: skip
                    except torch.OutOfMemoryError:
                        result["skipped"].append({**setting, "reason": "out of memory"})
                    if device == "cuda":
                        torch.cuda.empty_cache()
                    result["seconds"] = time.perf_counter() - start
                    if on_row is not None:
                        on_row(result)
    result["seconds"] = time.perf_counter() - start
    return result


def _one_setting(device: str, realistic: bool, batch: int, fusion: str, precision: str,
                 backend: str | None, repeats: int, peak: float | None, profile: bool) -> dict[str, Any]:  # fmt: skip
    from ..modeling.freezing import count_parameters
    from ..modeling.model import build_model, move_to

    size = sizes(realistic, batch)
    torch.manual_seed(0)
    config = {"encoders": size.encoders, "fusion": {"name": fusion, "dim": 256},
              "head": {"task": "classification", "num_classes": 4}}  # fmt: skip
    model = build_model(config, size.samples, seed=0).to(device)
    inputs = move_to(model.preprocess(size.samples), device)
    try:
        row = measure(model, inputs, batch, device, precision, backend, repeats, peak, profile)
        return {"params": count_parameters(model)["total"], **row}
    finally:
        del model, inputs
