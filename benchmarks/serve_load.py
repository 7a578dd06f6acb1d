"""Load test of the inference server on 127.0.0.1, with and without dynamic batching.

    python benchmarks/serve_load.py [--model RUN_DIR] [--configs deploy_a,model_bound]
        [--requests 256] [--concurrency 32] [--out benchmarks/results/serve_load.json]

Two models, unless --model names one:
- deploy_a: benchmarks/configs/deploy_a.yaml (tiny encoders), trained once into
  runs/serve_load/model; decoding and processing dominate.
- model_bound: a BERT-base-sized text encoder, ViT-S/16 on 32 px images and a wider audio
  CNN, random init (built from configs, saved once into runs/serve_load/model_bound), on
  the same small inputs; the network dominates.
For each model and setting (--max-batch 32 --max-wait-ms 10, then --max-batch 1) it starts
`multimodal serve`, sends a bounded burst of requests (text, tabular, a 32 px PNG and a
0.5 s WAV each) from --concurrency client threads, and reports requests/s and p50/p95/p99
latency.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_BOUND = {
    "encoders": {
        "text": {"name": "hf_text", "config": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 1000,
                 "max_position_embeddings": 64}, "max_length": 32},
        "image": {"name": "timm_image", "model_name": "vit_small_patch16_224", "img_size": 32},
        "audio": {"name": "audio_cnn", "channels": [32, 64, 128], "sample_rate": 8000, "max_seconds": 0.5},
        "tabular": {"name": "tabular_mlp", "numerical": ["tab_0", "tab_1", "tab_2", "tab_3"],
                    "categorical": {"tab_channel": ["web", "store", "phone"]}, "dim": 64},
    },
    "fusion": {"name": "concat", "dim": 256},
    "head": {"task": "classification", "num_classes": 4},
}  # fmt: skip


def saved_model(name: str) -> Path:
    """The served folder of a named model, built (and for deploy_a, trained) on first use."""
    folder = Path("runs/serve_load") / ("model" if name == "deploy_a" else name)
    if name == "deploy_a" and not (folder / "best_model").is_dir():
        from multimodal.experiments.config import load_run_config
        from multimodal.experiments.runs import train_run

        train_run(load_run_config(ROOT / "benchmarks/configs/deploy_a.yaml"), folder)
    elif name == "model_bound" and not (folder / "model.safetensors").is_file():
        import multimodal as mm

        spec = mm.DatasetSpec(options={"samples_per_domain": 100})
        view = mm.data.RowView(mm.load_dataset(spec)["train"], spec, "train")
        mm.build_model(MODEL_BOUND, [view[i] for i in range(len(view))], seed=0).save_pretrained(
            folder
        )
    return folder


def request_sample(i: int) -> dict:
    import soundfile as sf
    from PIL import Image

    png, wav = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (32, 32), (i % 255, 80, 160)).save(png, format="PNG")
    sf.write(
        wav,
        (0.1 * np.sin(np.arange(4000) * (0.05 + i % 7 / 100))).astype(np.float32),
        8000,
        format="WAV",
    )
    return {"text": f"sample {i} with a few words", "image": base64.b64encode(png.getvalue()).decode(),
            "audio": base64.b64encode(wav.getvalue()).decode(),
            "tabular": {"tab_0": 0.1 * i, "tab_1": -0.2, "tab_2": 0.5, "tab_3": 1.0, "tab_channel": "web"}}  # fmt: skip


def load(model: Path, max_batch: int, max_wait_ms: float, requests: int, concurrency: int) -> dict:
    import httpx

    from multimodal.deploy.serve import start_server

    server, url = start_server(
        model, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)
    )
    try:
        payloads = [json.dumps({"inputs": request_sample(i)}).encode() for i in range(requests)]
        with httpx.Client(timeout=120) as client:  # warm-up
            for p in payloads[:4]:
                client.post(
                    f"{url}/predict", content=p, headers={"content-type": "application/json"}
                )
        before = httpx.get(f"{url}/health").json()

        def call(payload: bytes) -> float:
            tick = time.perf_counter()
            response = httpx.post(
                f"{url}/predict",
                content=payload,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            response.raise_for_status()
            return time.perf_counter() - tick

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(call, payloads))
        seconds = time.perf_counter() - start
        after = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.asarray(latencies) * 1000
    batches = after["batches"] - before["batches"]
    return {
        "max_batch": max_batch, "max_wait_ms": max_wait_ms, "requests": requests, "concurrency": concurrency,
        "requests_per_s": requests / seconds, "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch_size": (after["samples"] - before["samples"]) / max(batches, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="serve this run or save_pretrained folder only")
    parser.add_argument(
        "--configs", default="deploy_a,model_bound", help="(default: deploy_a,model_bound)"
    )
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/serve_load/results.json"))
    args = parser.parse_args()
    models = (
        {str(args.model): args.model}
        if args.model
        else {n: saved_model(n) for n in args.configs.split(",")}
    )
    rows = []
    for name, model in models.items():
        for max_batch, wait in ((32, 10.0), (1, 0.0)):
            rows.append(
                {"model": name, **load(model, max_batch, wait, args.requests, args.concurrency)}
            )
    print(
        f"{'model':<14} {'setting':<18} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6}"
    )
    for r in rows:
        setting = f"batched (max {r['max_batch']})" if r["max_batch"] > 1 else "unbatched"
        print(f"{r['model']:<14} {setting:<18} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['mean_batch_size']:>6.1f}")  # fmt: skip
    for name in models:
        batched, unbatched = (r for r in rows if r["model"] == name)
        print(f"{name}: batched / unbatched requests/s {batched['requests_per_s'] / unbatched['requests_per_s']:.2f}x, "
              f"p95 {batched['p95_ms']:.0f} ms against {unbatched['p95_ms']:.0f} ms")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
