"""`multimodal export` and `serve`: a saved model outside the training code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_model,
    add_overwrite,
    load_model,
    non_negative_float,
    positive_float,
    positive_int,
    refuse_to_replace,
)


def run_export(args: argparse.Namespace) -> int:
    from ..deploy.export import example_value, export_difference, export_onnx

    out = Path(args.out or Path(args.model) / "onnx")
    quantized = _quantized(out, args.quantize) if args.quantize else None
    written = [out] if quantized is None else [out, quantized, _quantize_report(quantized)]
    refuse_to_replace(written, args.overwrite)
    model = load_model(args)
    export_onnx(model, out, args.opset)
    samples = [{m: example_value(p) for m, p in model.processor.processors.items()}] * 3
    print(f"exported {out / 'model.onnx'}; onnxruntime vs PyTorch max |logit diff| "
          f"{export_difference(model, out, samples):.2e} on {len(samples)} examples")  # fmt: skip
    if args.quantize:
        _quantize(args, out)
    return 0


def _quantize(args: argparse.Namespace, out: Path) -> None:
    """The int8 copy beside the export, and with --config its size, latency and metric per
    domain of the test split against fp32."""
    from ..core.io import write_json_atomic
    from ..deploy.export import OnnxModel
    from ..deploy.quantize import domain_report, latency_ms, quantize_export, size_mb

    rows = _split_rows(args.config, "test") if args.config else []
    calibration = []
    if args.quantize == "static":
        if not (args.config and args.calibration_domain):
            raise ValueError(
                "--quantize static needs --config and --calibration-domain (rows to calibrate on)"
            )
        train = [
            r for r in _split_rows(args.config, "train") if r["domain"] == args.calibration_domain
        ]
        if not train:
            raise ValueError(
                f"--calibration-domain {args.calibration_domain!r}: no training rows of that domain"
            )
        calibration = train[: args.calibration_rows]
    q_out = quantize_export(out, _quantized(out, args.quantize), args.quantize, calibration)
    models = {"fp32": OnnxModel(out), "int8": OnnxModel(q_out)}
    report: dict = {"mode": args.quantize, "calibration_domain": args.calibration_domain,
                    "calibration_rows": len(calibration),
                    "size_mb": {k: size_mb(f) for k, f in (("fp32", out), ("int8", q_out))}}  # fmt: skip
    if rows:
        report["latency_ms"] = {
            k: {b: latency_ms(m.predict, rows, b) for b in (1, 32)} for k, m in models.items()
        }
        report["domains"] = domain_report(models, rows)
    write_json_atomic(_quantize_report(q_out), report)
    print(f"int8 ({args.quantize}) {q_out / 'model.onnx'}: {report['size_mb']['int8']:.1f} MB "
          f"against {report['size_mb']['fp32']:.1f} MB")  # fmt: skip
    for domain, entry in report.get("domains", {}).items():
        metric = next(iter(entry["fp32"]))
        print(f"  {domain}: {metric} {entry['fp32'][metric]:.4f} fp32, {entry['int8'][metric]:.4f} int8, "
              f"{entry['int8']['agreement']:.1%} of predictions agree ({entry['rows']} rows)")  # fmt: skip


def _quantized(out: Path, mode: str) -> Path:
    """The int8 copy's folder, beside the export."""
    return out.with_name(f"{out.name}-int8-{mode}")


def _quantize_report(quantized: Path) -> Path:
    return quantized.with_name(quantized.name + ".report.json")


def _split_rows(config: str, split: str) -> list[dict]:
    """The rows of a run config's data split, as ``predict`` takes them (with label, domain)."""
    from ..data.collate import RowView
    from ..data.loading import load_dataset, split_of
    from ..data.spec import DatasetSpec
    from ..experiments.config import load_run_config

    spec = DatasetSpec.from_dict(load_run_config(config, [])["data"])
    view = RowView(split_of(load_dataset(spec), split), spec, split)
    return [view[i] for i in range(len(view))]


def add_export(sub: Any) -> None:

    p = sub.add_parser("export", help="export a saved model (after its processors) to ONNX")
    add_model(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", help="the export folder (default MODEL/onnx)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--quantize", choices=("dynamic", "static"),
                   help="also write an int8 copy (onnxruntime.quantization) beside the export")  # fmt: skip
    p.add_argument(
        "--config",
        help="run config whose data's test split the int8 copy is measured on, per domain",
    )
    p.add_argument(
        "--calibration-domain",
        help="static: calibrate activation ranges on this domain's training rows",
    )
    p.add_argument(
        "--calibration-rows", type=positive_int, default=128, help="static: rows to calibrate on"
    )
    add_overwrite(p, "the export (and its int8 copy) in --out")
    p.set_defaults(func=run_export)


def run_serve(args: argparse.Namespace) -> int:
    from ..deploy.serve import Limits, serve

    limits = Limits(text_chars=args.max_text_chars, audio_seconds=args.max_audio_seconds,
                    samples=args.max_samples, decoding=args.decoding)  # fmt: skip
    serve(args.model, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          max_payload_mb=args.max_payload_mb, trust_remote_code=args.trust_remote_code,
          allow_unverified=args.allow_unverified, limits=limits)  # fmt: skip
    return 0


def add_serve(sub: Any) -> None:

    p = sub.add_parser("serve", help="an HTTP inference server with dynamic batching")
    add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (0-65535)")
    p.add_argument(
        "--max-batch", type=positive_int, default=32, help="1 turns dynamic batching off"
    )
    p.add_argument(
        "--max-wait-ms", type=non_negative_float, default=10.0, help="longest wait to fill a batch"
    )
    p.add_argument(
        "--max-payload-mb", type=positive_float, default=10.0, help="largest request body"
    )
    p.add_argument(
        "--max-text-chars", type=positive_int, default=100_000, help="longest text in a sample"
    )
    p.add_argument("--max-audio-seconds", type=positive_float, default=60.0,
                   help="longest audio clip in a sample, from its header")  # fmt: skip
    p.add_argument(
        "--max-samples", type=positive_int, default=256, help="most samples in one request"
    )
    p.add_argument("--decoding", type=positive_int, default=2, help="requests decoded at once; the rest "
                   "wait, which bounds memory under concurrent large images or audio")  # fmt: skip
    p.set_defaults(func=run_serve)


def _port(value: str) -> int:
    """A TCP port: an integer from 0 to 65535 (argparse's error names the flag)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def run_push(args: argparse.Namespace) -> int:
    from ..modeling.hub import push_folder

    info = push_folder(args.model, args.repo_id, private=args.private or None, revision=args.revision,
                       commit_message=args.message)  # fmt: skip
    print(f"pushed {args.model} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


def add_push(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="upload a saved model (weights, config, processors, checksums, model card) to a "
        "Hugging Face hub repository; the token comes from `hf auth login` or HF_TOKEN",
    )
    p.add_argument(
        "--model", required=True, help="a saved model folder, or a run folder with best_model/"
    )
    p.add_argument("--repo-id", required=True, help="org/name on the hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="the branch to push to (default: main)")
    p.add_argument("--message", default="Upload transferfuse model", help="the commit message")
    p.set_defaults(func=run_push)
