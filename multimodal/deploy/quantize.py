"""int8 ONNX exports through ``onnxruntime.quantization``, and what they cost per domain.

``dynamic``: weights int8, activations quantised at run time (no calibration). ``static``:
weights and activations int8 (QDQ), activation ranges calibrated on processed batches of a
named domain's rows. The quantised folder is an export folder like any other (``OnnxModel``
loads it), with ``export.json`` saying how it was quantised.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_dir, verify_folder, write_checksums, write_json_atomic
from .export import EXPORT_NAME, ONNX_NAME, OnnxModel

logger = logging.getLogger(__name__)
MODES = ("dynamic", "static")


class _Calibration:
    """onnxruntime's ``CalibrationDataReader``: the export's input feeds of ``samples`` in
    batches of ``batch_size``, each processed when onnxruntime asks for it, with a bar (a
    static quantisation spends its minutes here)."""

    def __init__(
        self, model: OnnxModel, samples: Sequence[Mapping[str, Any]], batch_size: int
    ) -> None:
        from tqdm.auto import tqdm

        self.model, self.samples, self.size = model, samples, batch_size
        self.starts = iter(range(0, len(samples), batch_size))
        self.bar = tqdm(total=math.ceil(len(samples) / batch_size), unit="batch",
                        desc=f"calibrating int8 on {len(samples)} rows")  # fmt: skip

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self.starts, None)
        if start is None:
            self.bar.close()
            return None
        chunk = [dict(s) for s in self.samples[start : start + self.size]]
        self.bar.update()
        return self.model.feed(self.model.processor(chunk))


def quantize_export(
    folder: str | Path, out: str | Path, mode: str,
    calibration: Sequence[Mapping[str, Any]] | None = None, batch_size: int = 16,
) -> Path:  # fmt: skip
    """An int8 copy of the ONNX export in ``folder`` at ``out``; ``static`` calibrates on
    ``calibration`` (raw samples, as ``predict`` takes them)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise ValueError(f"quantize must be one of {MODES}, got {mode!r}")
    if mode == "static" and not calibration:
        raise ValueError("static quantisation needs calibration samples (--calibration-domain)")
    folder = Path(folder)
    verify_folder(folder)
    with atomic_dir(out) as tmp:
        shutil.copytree(folder / "processors", tmp / "processors")
        source, target = str(folder / ONNX_NAME), str(tmp / ONNX_NAME)
        logger.info("quantising %s to int8 (%s)%s", folder / ONNX_NAME, mode,
                    "" if mode == "dynamic" else ": calibration, then the quantised graph")  # fmt: skip
        if mode == "dynamic":
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        else:
            reader = _Calibration(OnnxModel(folder), list(calibration or []), batch_size)
            quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip
        meta = json.loads((folder / EXPORT_NAME).read_text())
        meta["quantized"] = {"mode": mode, "calibration_rows": len(calibration or [])}
        write_json_atomic(tmp / EXPORT_NAME, meta)
        write_checksums(tmp)
    return Path(out)


def size_mb(folder: str | Path) -> float:
    """The graph's size: ``model.onnx`` and its external weights (``model.onnx.data``)."""
    return sum(p.stat().st_size for p in Path(folder).glob(f"{ONNX_NAME}*")) / 2**20


def latency_ms(
    predict: Any, samples: Sequence[Mapping[str, Any]], batch: int, repeats: int = 5
) -> float:
    """The median milliseconds of ``predict`` on ``batch`` samples (after one warm-up call),
    processors included."""
    rows = [samples[i % len(samples)] for i in range(batch)]
    predict(rows)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(rows)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def domain_report(models: Mapping[str, OnnxModel], rows: Sequence[Mapping[str, Any]],
                  batch_size: int = 32) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per domain of ``rows`` (RowView rows with ``label`` and ``domain``): each model's
    metrics and, against the first model, the share of rows whose predicted label agrees."""
    import torch

    out: dict[str, dict[str, Any]] = {}
    for domain in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == domain]
        labels = torch.as_tensor([r["label"] for r in mine])
        entry: dict[str, Any] = {"rows": len(mine)}
        first = None
        for name, model in models.items():
            logits = np.concatenate([model.logits(model.processor([dict(r) for r in mine[i : i + batch_size]]))
                                     for i in range(0, len(mine), batch_size)])  # fmt: skip
            predicted = model.task.outputs(torch.from_numpy(logits))["labels"]
            entry[name] = model.task.metrics(torch.from_numpy(logits), labels)
            first = predicted if first is None else first
            entry[name]["agreement"] = float((predicted == first).float().mean())
        out[domain] = entry
    return out
