"""Load test of the inference server on 127.0.0.1, with and without dynamic batching.

    python benchmarks/serve_load.py [--model RUN_DIR] [--requests 256] [--concurrency 32]

Without --model it trains benchmarks/configs/deploy_a.yaml into runs/serve_load/model once.
For each setting (--max-batch 32 --max-wait-ms 10, then --max-batch 1) it starts
`multimodal serve`, sends a bounded burst of requests (text, tabular, a PNG and a WAV each)
from --concurrency client threads, and reports requests/s and p50/p95/p99 latency.
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


def _sample(i: int) -> dict:
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
        payloads = [json.dumps({"inputs": _sample(i)}).encode() for i in range(requests)]
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
    parser.add_argument("--model", type=Path)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/serve_load/results.json"))
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = Path("runs/serve_load/model")
        if not (model / "best_model").is_dir():
            from multimodal.experiments.config import load_run_config
            from multimodal.experiments.runs import train_run

            train_run(load_run_config(ROOT / "benchmarks/configs/deploy_a.yaml"), model)
    rows = [
        load(model, 32, 10.0, args.requests, args.concurrency),
        load(model, 1, 0.0, args.requests, args.concurrency),
    ]
    print(f"{'setting':<22} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6}")
    for r in rows:
        name = f"batched (max {r['max_batch']})" if r["max_batch"] > 1 else "unbatched"
        print(
            f"{name:<22} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['mean_batch_size']:>6.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
