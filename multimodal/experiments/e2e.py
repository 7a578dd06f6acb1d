"""The transfer protocol end to end on one device, for ``benchmarks/gpu.py --e2e``: a
suite's unit (real-digits: files on disk, decoded once, to the device) run twice, with the
encoders frozen (the suite's own linear-probe setting, the reference) and fine-tuned (every
weight trained, the encoders at ``encoder_lr``, in the source training and the adaptation).
Per stage: wall time, rows/s and the device's utilisation; for the source training, the
share of its loop spent waiting for batches, which says whether the loader or the device
sets the pace; and the adapted accuracy of each."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

STAGES = ("load", "source_train", "zero_shot_eval", "scratch", "adapt")
# The fine-tuned arm over the suite's config: every weight trains, the pretrained encoders
# 20x slower than the fusion and head.
FINETUNE = {"strategy": "full", "encoder_lr": 1.0e-4}


class Utilisation:
    """The device's utilisation (percent, ``torch.cuda.utilization``), sampled every
    ``every`` seconds in a thread, with the time of each sample; nothing on CPU."""

    def __init__(self, device: str, every: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []
        self.every, self.stop = every, threading.Event()
        self.available = device == "cuda" and _nvml_works()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Utilisation:
        if self.available:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.available:
            self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append((time.perf_counter(), float(torch.cuda.utilization())))

    def mean(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else None


def _nvml_works() -> bool:
    try:
        torch.cuda.utilization()
    except Exception:  # no pynvml, or a driver without NVML: utilisation is not reported
        return False
    return True


def e2e_configs(suite_path: str | Path, encoders: str | None, episodes: int,
                overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The frozen (strategy head in source training and adaptation) and fine-tuned run
    configs of the suite's first concat unit (seed 0) with ``encoders`` (a set of the
    suite's encoders axis), ``episodes`` per target and ``overrides`` (section -> keys)."""
    from .bench.plan import load_suite, plan, prepare_data, unit_config

    suite = load_suite(suite_path)
    prepare_data(suite)  # real-digits: built by its builder script where missing
    units = [
        u
        for u in plan(suite, ["concat"], 1)
        if encoders is None or dict(u.grid).get("encoders") == encoders
    ]
    if not units:
        raise ValueError(f"{suite.name} has no concat unit with encoders {encoders!r}")
    frozen = unit_config(suite, units[0])
    frozen["transfer"]["episodes"] = episodes
    for section, keys in (overrides or {}).items():
        frozen[section] = {**(frozen.get(section) or {}), **keys}
    frozen["train"] = {**frozen.get("train", {}), "strategy": "head"}
    frozen["transfer"]["adapt"] = {**frozen["transfer"].get("adapt", {}), "strategy": "head"}
    tuned = copy.deepcopy(frozen)
    tuned["train"] = {**tuned["train"], **FINETUNE}
    tuned["transfer"]["adapt"] = {**tuned["transfer"].get("adapt", {}), **FINETUNE}
    return {"frozen": frozen, "finetuned": tuned}


def run_e2e(configs: Mapping[str, dict[str, Any]], device: str,
            budget_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Each config through ``transfer`` (head adaptation) in turn, while the budget lasts
    (one always runs; the rest are listed as skipped)."""
    from .transfer import transfer_adaptations

    start, arms, skipped = time.perf_counter(), {}, []
    for name, config in configs.items():
        if budget_s is not None and arms and time.perf_counter() - start > budget_s:
            skipped.append(name)
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with Utilisation(device) as utilisation:
            began = time.perf_counter()
            report = transfer_adaptations(config, ["head"])["head"]
        arms[name] = summarise(report, utilisation, began, device)
    return {"arms": arms, "skipped": skipped, "seconds": time.perf_counter() - start}


def summarise(report: Any, utilisation: Utilisation, began: float, device: str) -> dict[str, Any]:
    """Per stage (they run one after another, in ``STAGES`` order): seconds, rows through
    it per second and mean utilisation; the source fit's loader wait; accuracy."""
    config = report.config
    stages, at = {}, began
    rows = _stage_rows(report)
    for stage in STAGES:
        seconds = report.stage_seconds.get(stage, 0.0)
        stages[stage] = {"seconds": seconds, "rows": rows.get(stage),
                         "rows_per_s": rows[stage] / seconds if rows.get(stage) and seconds else None,
                         "utilisation": utilisation.mean(at, at + seconds)}  # fmt: skip
        at += seconds
    wait = report.source_fit.get("data_wait_share", 0.0)
    busy = stages["source_train"]["utilisation"]
    return {
        "strategy": config["train"].get("strategy"), "encoder_lr": config["train"].get("encoder_lr"),
        "stages": stages, "source_fit": report.source_fit,
        "bottleneck": "loader" if wait > 0.5 or (busy is not None and busy < 50 and wait > 0.2) else "device",
        "source": report.source, "zero_shot": {t: r.zero_shot for t, r in report.targets.items()},
        "adapted": {t: r.adapted for t, r in report.targets.items()},
        "adapted_mean": sum(r.adapted for r in report.targets.values()) / len(report.targets),
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }  # fmt: skip


def _stage_rows(report: Any) -> dict[str, int]:
    """Rows through each stage: trained (rows x the epochs its train config sets) or
    evaluated."""
    from .adaptations import create_adaptation
    from .config import RunConfig
    from .transfer.stages import scratch_overrides

    run = RunConfig.from_dict(report.config)
    arm = create_adaptation(report.config["transfer"]["adaptation"])
    epochs = {"scratch": run.stage(**scratch_overrides(run)).epochs,
              "adapt": run.stage(**arm.overrides(run.transfer)).epochs}  # fmt: skip
    fit = report.source_fit
    targets = report.targets.values()
    return {
        "source_train": int(fit.get("train_samples_per_s", 0) * fit.get("train_seconds", 0)),
        "zero_shot_eval": report.source_test_samples + sum(r.test_samples for r in targets),
        "scratch": sum(r.adapt_samples * epochs["scratch"] * len(r.episodes) for r in targets),
        "adapt": sum(r.adapt_samples * epochs["adapt"] * len(r.episodes) for r in targets),
    }
