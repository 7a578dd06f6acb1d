"""The inference server under hostile load: what each bad request costs, and whether good
requests still get through when a quarter of the traffic is hostile.

    python benchmarks/serve_hostile.py [--model RUN_DIR] [--requests 512] [--concurrency 32]
        [--out benchmarks/results/serve_hostile.json]

The served model is deploy_a (benchmarks/configs/deploy_a.yaml, trained once into
runs/serve_load/model, as serve_load.py does) unless --model names one. Hostile kinds:
- deep: JSON nested 100,000 levels;
- deep_form: the same inside a multipart tabular field;
- wide: a 1 x 600,000 pixel PNG (661 bytes), and a 5,000 x 1 one;
- long_text: 9 MB of words, against max_length 32;
- long_audio: a 6.4 MB WAV (200 s at 16 kHz), against a 0.5 s encoder;
- truncated: a PNG and a WAV cut in half;
- odd_rate: WAVs at 7,919 Hz (10 frames, 113 bytes), 22,051 Hz and 96,001 Hz (1 s), whose
  resampling between coprime rates once cost gigabytes;
- big_image: an 8,000 x 8,000 PNG, within the pixel limit (64 million);
- bad_form: multipart bodies with no closing boundary, or a broken part header;
- many_samples: 100,000 empty samples in one request (400 KB).

Three phases, each on a fresh server (its peak RSS is the kernel's VmHWM):
1. per kind: 8 requests of that kind at once, after 4 good ones: statuses, seconds each and
   how much the peak RSS grew;
2. good only: --requests good requests from --concurrency threads;
3. mixed: the same, with a quarter of them hostile (the kinds in turn).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from serve_load import request_sample, saved_model

KINDS = ("deep", "deep_form", "wide", "long_text", "long_audio", "truncated", "odd_rate",
         "big_image", "bad_form", "many_samples")  # fmt: skip


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _rgb_png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(-3000, 3000, int(rate * seconds), dtype=np.int16)
    sf.write(buf, noise, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def hostile(kind: str, i: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the i-th request of ``kind``."""
    as_json = {"content-type": "application/json"}
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    if kind == "deep":
        return b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", as_json
    if kind == "deep_form":
        import httpx

        request = httpx.Request(
            "POST", "http://x", files={"tabular": (None, "[" * 100_000 + "]" * 100_000)}
        )
        return request.read(), dict(request.headers)
    if kind == "wide":
        image = _png(600_000, 1) if i % 2 == 0 else _png(1, 5_000)
        return json.dumps({"inputs": {"image": b64(image)}}).encode(), as_json
    if kind == "long_text":
        words = " ".join(f"w{(i * 7919 + j) % 5003}" for j in range(1_600_000))[:9_000_000]
        return json.dumps({"inputs": {"text": words}}).encode(), as_json
    if kind == "long_audio":
        return json.dumps({"inputs": {"audio": b64(_wav(200.0))}}).encode(), as_json
    if kind == "odd_rate":
        rate, seconds = ((7919, 10 / 7919), (22051, 1.0), (96001, 1.0))[i % 3]
        return json.dumps({"inputs": {"audio": b64(_wav(seconds, rate))}}).encode(), as_json
    if kind == "big_image":
        return json.dumps({"inputs": {"image": b64(_rgb_png(8000))}}).encode(), as_json
    if kind == "bad_form":
        part = b'--b0undary\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello'
        body = part if i % 2 == 0 else b"--b0undary\r\nnot a header\r\n\r\n--b0undary--\r\n"
        return body, {"content-type": "multipart/form-data; boundary=b0undary"}
    if kind == "many_samples":
        return json.dumps({"inputs": [{}] * 100_000}).encode(), as_json
    if kind == "truncated":
        whole = _png(32, 32) if i % 2 == 0 else _wav(0.5)
        key = "image" if i % 2 == 0 else "audio"
        return json.dumps({"inputs": {key: b64(whole[: len(whole) // 2])}}).encode(), as_json
    raise ValueError(kind)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    import httpx

    tick = time.perf_counter()
    try:
        status = httpx.post(
            f"{url}/predict", content=body, headers=headers, timeout=300
        ).status_code
    except (
        httpx.TransportError
    ):  # a reset connection counts as a failure, not a crash of the client
        status = 0
    return status, time.perf_counter() - tick


class Server:
    def __init__(self, model: Path) -> None:
        from multimodal.deploy.serve import start_server

        self.process, self.url = start_server(model, "--max-batch", "32", "--max-wait-ms", "10")
        good = json.dumps({"inputs": request_sample(0)}).encode()
        for _ in range(4):  # warm-up
            _post(self.url, good, {"content-type": "application/json"})
        self.warm_rss_mb = _peak_rss_mb(self.process.pid)

    def close(self) -> float:
        peak = _peak_rss_mb(self.process.pid)
        self.process.terminate()
        self.process.wait(timeout=30)
        return peak


def per_kind(model: Path) -> dict[str, Any]:
    out = {}
    for kind in KINDS:
        server = Server(model)
        try:
            requests = [hostile(kind, i) for i in range(8)]
            with ThreadPoolExecutor(max_workers=8) as pool:  # at once: memory across requests
                calls = list(pool.map(lambda r, url=server.url: _post(url, *r), requests))
        finally:
            peak = server.close()
        out[kind] = {
            "statuses": sorted({s for s, _ in calls}), "max_seconds": max(t for _, t in calls),
            "peak_rss_mb": peak, "peak_rss_growth_mb": peak - server.warm_rss_mb,
        }  # fmt: skip
        print(f"{kind:<11} statuses {out[kind]['statuses']}, slowest {out[kind]['max_seconds']:.2f} s, "
              f"peak RSS {peak:.0f} MB (+{out[kind]['peak_rss_growth_mb']:.0f} MB over warm)")  # fmt: skip
    return out


def load(model: Path, requests: int, concurrency: int, hostile_share: float) -> dict[str, Any]:
    plan: list[tuple[str, bytes, dict[str, str]]] = []
    every = round(1 / hostile_share) if hostile_share else 0
    for i in range(requests):
        if every and i % every == every - 1:
            nth = i // every  # the nth hostile request: kinds in turn, each kind's variants in turn
            kind = KINDS[nth % len(KINDS)]
            plan.append((kind, *hostile(kind, nth // len(KINDS))))
        else:
            body = json.dumps({"inputs": request_sample(i)}).encode()
            plan.append(("good", body, {"content-type": "application/json"}))
    server = Server(model)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(lambda p: _post(server.url, p[1], p[2]), plan))
        seconds = time.perf_counter() - start
    finally:
        peak = server.close()
    good = [(s, t) for (kind, _, _), (s, t) in zip(plan, results, strict=True) if kind == "good"]
    statuses: dict[str, dict[str, int]] = {}
    for (kind, _, _), (status, _) in zip(plan, results, strict=True):
        counts = statuses.setdefault(kind, {})
        counts[str(status)] = counts.get(str(status), 0) + 1
    ms = np.asarray([t for _, t in good]) * 1000
    return {
        "requests": requests, "concurrency": concurrency, "hostile": requests - len(good),
        "good_answered_share": sum(s == 200 for s, _ in good) / len(good),
        "server_errors_5xx": sum(500 <= s < 600 for s, _ in results),
        "connection_failures": sum(s == 0 for s, _ in results), "statuses": statuses,
        "good_p50_ms": float(np.percentile(ms, 50)), "good_p95_ms": float(np.percentile(ms, 95)),
        "seconds": seconds, "peak_rss_mb": peak,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="serve this run or save_pretrained folder")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_hostile.json"))
    args = parser.parse_args()
    model = args.model or saved_model("deploy_a")
    from multimodal.core.provenance import environment

    result: dict[str, Any] = {"environment": environment(), "per_kind": per_kind(model)}
    for name, share in (("good_only", 0.0), ("mixed", 0.25)):
        result[name] = load(model, args.requests, args.concurrency, share)
        r = result[name]
        print(f"{name:<9} {r['requests']} requests ({r['hostile']} hostile) x {r['concurrency']}: good answered "
              f"{r['good_answered_share']:.1%}, 5xx {r['server_errors_5xx']}, resets {r['connection_failures']}, "
              f"good p95 {r['good_p95_ms']:.0f} ms, peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    ratio = result["mixed"]["good_p95_ms"] / result["good_only"]["good_p95_ms"]
    result["good_p95_mixed_over_good_only"] = ratio
    print(f"good p95 with a quarter hostile / good only: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
