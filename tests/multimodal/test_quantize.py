"""int8 exports: dynamic and static (calibrated on one domain) agree with fp32 on at least
95% of a tiny model's test rows, are loaded like any export, and bad calls are refused."""

from __future__ import annotations

import importlib.util
import json

import pytest

import multimodal as mm
from multimodal.deploy.export import OnnxModel, export_onnx
from multimodal.deploy.quantize import domain_report, quantize_export
from multimodal.experiments.config import model_config
from tests.multimodal.tiny_run import tiny_data

# find_spec, not importorskip: the import would cost seconds at collection.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason="int8 export needs onnxruntime",
)


@pytest.mark.slow
def test_int8_dynamic_and_static_agree_with_fp32_on_95_percent_of_rows(tmp_path) -> None:
    from multimodal.engine import FitData, fit

    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    # trained until its answers have margins (at 3 to 6 epochs, 3 to 6 of the 28 rows' top
    # two logits were near enough to tie for int8 rounding to flip them)
    fit(model, FitData(spec, dsd["train"]), {**config["train"], "epochs": 10})
    fp32 = export_onnx(model, tmp_path / "fp32")
    test = [
        mm.data.RowView(dsd[s], spec, s)[i]
        for s in ("test", "validation")
        for i in range(len(dsd[s]))
    ]
    calibration = [r for r in (mm.data.RowView(dsd["train"], spec, "train")[i] for i in range(len(dsd["train"])))
                   if r["domain"] == "d0"]  # fmt: skip
    dynamic = quantize_export(fp32, tmp_path / "dyn", "dynamic")
    static = quantize_export(fp32, tmp_path / "static", "static", calibration[:32])
    assert json.loads((static / "export.json").read_text())["quantized"] == {
        "mode": "static",
        "calibration_rows": 32,
    }
    report = domain_report(
        {"fp32": OnnxModel(fp32), "dynamic": OnnxModel(dynamic), "static": OnnxModel(static)}, test
    )
    total = sum(e["rows"] for e in report.values())
    assert total == len(test) > 20
    for name in ("dynamic", "static"):
        agree = sum(e[name]["agreement"] * e["rows"] for e in report.values()) / total
        assert agree >= 0.95, (name, agree)


def test_static_quantisation_needs_calibration_rows(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs calibration samples"):
        quantize_export(tmp_path, tmp_path / "out", "static", [])
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_export(tmp_path, tmp_path / "out", "int4")


def test_the_domain_report_scores_a_calibrated_export_at_its_temperature(tmp_path) -> None:
    from multimodal.engine import evaluate

    config, spec, dsd, rows = tiny_data()
    model = mm.build_model(model_config(config), rows, seed=0)
    model.head.task.temperature = 3.0  # as multimodal calibrate leaves it
    export = OnnxModel(export_onnx(model, tmp_path / "fp32"))
    test = [mm.data.RowView(dsd["test"], spec, "test")[i] for i in range(len(dsd["test"]))]
    report = domain_report({"fp32": export}, test)
    for domain, entry in report.items():
        ours = evaluate(model, mm.data.select_domains(dsd["test"], domain), spec)
        assert entry["fp32"]["ece"] == pytest.approx(ours["ece"], abs=1e-4), domain
