"""What a smaller model costs per domain on real-digits: the teacher (pretrained frozen
encoders, concat, trained on the source domain), a distilled student (small random-init
encoders trained on the teacher's probabilities over the source rows and the targets'
unlabelled train rows), and the teacher's int8 ONNX copies (dynamic; static calibrated on
the source domain). Size, CPU latency at batch 1 and 32 (processors included, median of 5),
and accuracy per domain's test split with its 95% CI over test rows (Wilson), plus each
int8 copy's agreement with the fp32 export.

    python benchmarks/compress.py --out benchmarks/results/real-digits-compress
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
STUDENT_ENCODERS = {
    "text": {"name": "hf_text", "max_length": 8,
             "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64, "vocab_size": 200, "max_position_embeddings": 16}},
    "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
    "audio": {"name": "audio_cnn", "channels": [8, 16, 32], "sample_rate": 16000, "max_seconds": 1.5,
              "n_mels": 32, "n_fft": 512, "hop_length": 256},
}  # fmt: skip


def wilson(p: float, n: int) -> float:
    """Half-width of the 95% Wilson interval of a proportion p over n rows."""
    z = 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(abs(centre + half - p), abs(p - (centre - half)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(HERE / "configs" / "real-digits-federated.yaml"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", default="hand-espeak-en")
    args = parser.parse_args(argv)
    import multimodal as mm
    from multimodal.data.loading import load_dataset
    from multimodal.experiments.bench.plan import load_suite, prepare_data

    base = yaml.safe_load(Path(args.config).read_text())
    base.pop("federate", None)
    if "real-digits" in base["data"]["path"]:  # built by the suite's builder where missing
        prepare_data(load_suite(HERE / "suites" / "real-digits.yaml"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = mm.DatasetSpec.from_dict(base["data"])
    dsd = load_dataset(spec)
    timings: dict[str, float] = {}
    teacher, student = train_models(base, spec, dsd, args.source, timings)
    onnx = Path(tempfile.mkdtemp(prefix="compress-"))  # the graphs are large: not kept
    try:
        summary = measure(teacher, student, spec, dsd, args.source, onnx, timings)
    finally:
        shutil.rmtree(onnx)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "compress.md").write_text(markdown(summary))
    print((out / "compress.md").read_text())
    return 0


def train_models(base: dict[str, Any], spec: Any, dsd: Any, source: str,
                 timings: dict[str, float]) -> tuple[Any, Any]:  # fmt: skip
    """The teacher fitted on the source domain, and the student distilled from it over the
    source rows and the other domains' unlabelled training rows."""
    import multimodal as mm
    from multimodal.data.loading import select_domains
    from multimodal.engine import FitData, fit
    from multimodal.experiments.distill import distill
    from multimodal.experiments.transfer.plan import fitting_rows

    train, validation = (
        select_domains(dsd["train"], source),
        select_domains(dsd["validation"], source),
    )
    others = sorted(set(dsd["train"]["domain"]) - {source})
    cfg = mm.TrainConfig(**{**base["train"], "output_dir": None, "seed": 0})
    tick = time.perf_counter()
    teacher = mm.build_model(
        {k: base[k] for k in ("encoders", "fusion", "head")}, fitting_rows(train, spec), seed=0
    )
    fit(teacher, FitData(spec, train, validation), cfg)
    timings["teacher_train_s"] = time.perf_counter() - tick
    student_cfg = {
        "encoders": STUDENT_ENCODERS,
        "fusion": {"name": "concat", "dim": 64},
        "head": base["head"],
    }
    student = mm.build_model(copy.deepcopy(student_cfg), fitting_rows(train, spec), seed=0)
    tick = time.perf_counter()
    distill([teacher], student, spec, train, cfg.replace(strategy="full", epochs=30, lr=3e-3), temperature=2.0,
            alpha=0.5, unlabelled=select_domains(dsd["train"], others), validation=validation)  # fmt: skip
    timings["student_distill_s"] = time.perf_counter() - tick
    return teacher, student


def measure(teacher: Any, student: Any, spec: Any, dsd: Any, source: str, onnx: Path,
            timings: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """Both models exported to ``onnx``, the teacher's int8 copies beside them; each one's
    size, latency and accuracy per domain of the test split."""
    from multimodal.data.collate import RowView
    from multimodal.data.loading import select_domains
    from multimodal.deploy.export import OnnxModel, export_onnx
    from multimodal.deploy.quantize import domain_report, latency_ms, quantize_export, size_mb
    from multimodal.modeling.freezing import count_parameters

    tick = time.perf_counter()
    exports = {
        "teacher": export_onnx(teacher, onnx / "teacher"),
        "student": export_onnx(student, onnx / "student"),
    }
    timings["export_s"] = time.perf_counter() - tick
    view = RowView(select_domains(dsd["train"], source), spec, "train")
    calibration = [view[i] for i in range(min(128, len(view)))]
    tick = time.perf_counter()
    exports["teacher-int8-dynamic"] = quantize_export(
        exports["teacher"], onnx / "int8-dynamic", "dynamic"
    )
    exports["teacher-int8-static"] = quantize_export(
        exports["teacher"], onnx / "int8-static", "static", calibration
    )
    timings["quantize_s"] = time.perf_counter() - tick
    test = RowView(dsd["test"], spec, "test")
    rows = [test[i] for i in range(len(test))]
    models = {k: OnnxModel(v) for k, v in exports.items()}
    report = domain_report(models, rows)
    summary: dict[str, Any] = {"source": source, "timings": timings, "models": {}}
    for name, model in models.items():
        entry = {"size_mb": size_mb(exports[name]),
                 "parameters": count_parameters(student if name == "student" else teacher)["total"],
                 "latency_ms": {str(b): latency_ms(model.predict, rows, b) for b in (1, 32)}, "domains": {}}  # fmt: skip
        for domain, d in report.items():
            p = d[name]["accuracy"]
            entry["domains"][domain] = {"accuracy": p, "ci": wilson(p, d["rows"]), "rows": d["rows"],
                                        "agreement_with_teacher": d[name]["agreement"]}  # fmt: skip
        summary["models"][name] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    models = summary["models"]
    domains = list(next(iter(models.values()))["domains"])
    label = {d: f"{d} (source)" if d == summary["source"] else d for d in domains}
    lines = ["Accuracy per domain's test split ± 95% Wilson CI over its rows (one trained model each); agreement: "
             "share of test rows whose predicted class equals the fp32 teacher's. Latency: median of 5 CPU calls "
             "on 2 cores, processors included, onnxruntime.", "",
             "| model | size MB | parameters | latency b1 ms | latency b32 ms | " + " | ".join(label[d] for d in domains)
             + " | agreement |", "|---" * (6 + len(domains)) + "|"]  # fmt: skip
    for name, e in models.items():
        cells = [
            f"{e['domains'][d]['accuracy']:.3f} ± {e['domains'][d]['ci']:.3f}" for d in domains
        ]
        rows = sum(e["domains"][d]["rows"] for d in domains)
        agree = (
            sum(
                e["domains"][d]["agreement_with_teacher"] * e["domains"][d]["rows"] for d in domains
            )
            / rows
        )
        lines.append(f"| {name} | {e['size_mb']:.1f} | {e['parameters']:,} | {e['latency_ms']['1']:.1f} | "
                     f"{e['latency_ms']['32']:.1f} | " + " | ".join(cells) + f" | {agree:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
