"""benchmarks/gpu.py at tiny sizes on CPU, so the script a lent GPU runs cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

# Each trains for tens of seconds (Ray workers, calibration probes, the GPU script).
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_gpu_script_measures_every_setting_and_writes_json(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    # The eager backend traces through dynamo without compiling kernels (quick on CPU).
    module.main(["--tiny", "--device", "cpu", "--batch", "4", "--repeats", "1", "--fusions", "concat", "--precisions", "bf16",
                 "--compile-backend", "eager", "--peak-tflops", "1", "--profile", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    settings = [(r["fusion"], r["precision"], r["compile"]) for r in result["rows"]]
    assert settings == [(f, p, c) for c in ("off", "eager") for p in ("bf16",) for f in ("concat",)]
    assert result["skipped"] == [] and result["peak_bf16_flops"] == 1e12
    for r in result["rows"]:
        assert r["train_samples_per_s"] > 0 and r["infer_samples_per_s"] > 0
        # a training step costs more than inference: the backward pass is about twice the forward
        assert r["train_gflops_per_sample"] > 2 * r["infer_gflops_per_sample"] > 0
        assert math.isclose(r["train_mfu"], r["train_tflops"] / 1.0, rel_tol=1e-9)
        prof = r["train_profile"]  # on CPU the profile reads the CPU's clock
        assert prof["clock"] == "cpu" and prof["busy_ms_per_step"] > 0 and len(prof["top"]) > 3
        shares = [o["share"] for o in prof["top"]]
        assert 0 < sum(shares) <= 1 + 1e-9 and shares == sorted(shares, reverse=True)
    assert "packages" in result["environment"]


def test_a_spent_budget_lists_the_settings_left_and_fp32_runs(tmp_path) -> None:
    from multimodal.experiments.gpu_speed import device_matrix

    result = device_matrix("cpu", realistic=False, batch=2, fusions=["concat", "moe"], precisions=["fp32"],
                           compile_backends=[None], repeats=1, budget_s=0.0)  # fmt: skip
    assert [r["fusion"] for r in result["rows"]] == ["concat"]
    assert result["skipped"] == [
        {"fusion": "moe", "precision": "fp32", "compile": "off", "batch": 2}
    ]


def test_a_batch_sweep_lists_a_size_that_runs_out_of_memory(monkeypatch) -> None:
    import torch

    from multimodal.experiments import gpu_speed

    measure = gpu_speed.measure

    def capped(model, batch, size, *args):
        if size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return measure(model, batch, size, *args)

    monkeypatch.setattr(gpu_speed, "measure", capped)
    seen = []
    result = gpu_speed.device_matrix("cpu", realistic=False, batch=[2, 4], fusions=["concat"], precisions=["fp32"],
                                     compile_backends=[None], repeats=1, on_row=lambda r: seen.append(len(r["rows"])))  # fmt: skip
    assert [r["batch"] for r in result["rows"]] == [2] and seen == [1, 1]
    assert result["skipped"] == [{"fusion": "concat", "precision": "fp32", "compile": "off", "batch": 4,
                                  "reason": "out of memory"}]  # fmt: skip


def test_the_e2e_protocol_runs_frozen_and_fine_tuned_and_reports_each_stage(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "e2e.json"
    module.main(["--e2e", "--tiny", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"frozen", "finetuned"} and result["skipped"] == []
    frozen, tuned = result["arms"]["frozen"], result["arms"]["finetuned"]
    assert (frozen["strategy"], tuned["strategy"], tuned["encoder_lr"]) == ("head", "full", 1e-4)
    for arm in (frozen, tuned):
        assert set(arm["stages"]) == {"load", "source_train", "zero_shot_eval", "scratch", "adapt"}
        assert all(s["seconds"] > 0 for s in arm["stages"].values())
        assert arm["stages"]["source_train"]["rows_per_s"] > 0 and arm["bottleneck"] in (
            "loader",
            "device",
        )
        assert 0 <= arm["source_fit"]["data_wait_share"] < 1 and 0 <= arm["adapted_mean"] <= 1
    # the same rows in the same batches: only what trains differs
    assert tuned["source_fit"]["steps"] == frozen["source_fit"]["steps"] > 0
