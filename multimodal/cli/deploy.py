"""`multimodal export` and `serve`: a saved model outside the training code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_model, load_model


def run_export(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.export import OnnxModel, example_value, export_onnx

    model = load_model(args)
    out = Path(args.out or Path(args.model) / "onnx")
    export_onnx(model, out, args.opset)
    samples = [{m: example_value(p) for m, p in model.processor.processors.items()}] * 3
    with torch.no_grad():
        expected = model.predict(samples)["logits"].numpy()
    got = OnnxModel(out).predict(samples)["logits"]
    print(f"exported {out / 'model.onnx'}; onnxruntime vs PyTorch max |logit diff| "
          f"{float(abs(got - expected).max()):.2e} on {len(samples)} examples")  # fmt: skip
    return 0


def add_export(sub: Any) -> None:

    p = sub.add_parser("export", help="export a saved model (after its processors) to ONNX")
    add_model(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", help="the export folder (default MODEL/onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=run_export)


def run_serve(args: argparse.Namespace) -> int:
    from ..deploy.serve import Limits, serve

    print(
        f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /health, /metadata)"
    )
    serve(args.model, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          max_payload_mb=args.max_payload_mb, trust_remote_code=args.trust_remote_code,
          allow_unverified=args.allow_unverified,
          limits=Limits(text_chars=args.max_text_chars, audio_seconds=args.max_audio_seconds))  # fmt: skip
    return 0


def add_serve(sub: Any) -> None:

    p = sub.add_parser("serve", help="an HTTP inference server with dynamic batching")
    add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=32, help="1 turns dynamic batching off")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest wait to fill a batch")
    p.add_argument("--max-payload-mb", type=float, default=10.0, help="largest request body")
    p.add_argument("--max-text-chars", type=int, default=100_000, help="longest text in a sample")
    p.add_argument("--max-audio-seconds", type=float, default=60.0,
                   help="longest audio clip in a sample, from its header")  # fmt: skip
    p.set_defaults(func=run_serve)


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
