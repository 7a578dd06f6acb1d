"""An HTTP inference server (FastAPI on uvicorn) with dynamic batching.

POST /predict takes JSON, ``{"inputs": SAMPLE}`` or ``{"inputs": [SAMPLE, ...]}``, where a
sample maps modality keys to values: text as a string, tabular rows as an object, images and
audio as base64 strings of their encoded files (PNG, JPEG, WAV, FLAC...). It also takes
multipart forms: one field per modality, files for images and audio, a JSON object for a
tabular row. Any modality may be left out: the model's missing-modality path handles it.

Each sample is decoded, checked and processed once, off the event loop, as it arrives;
its tensors wait in a queue, and a worker pads and stacks them into one batch once
``max_batch`` samples are waiting or the oldest has waited ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves the route annotations here
from fastapi.responses import JSONResponse

from ..core.run_folder import RunFolder
from ..modeling.model import Batch, MultimodalModel, move_to
from ..modeling.processing import MultimodalProcessor

MEDIA = ("image", "audio")
# {"inputs": [{modality: {column: value}}]} nests 4 deep; anything deeper is refused before
# it is walked (100,000 nested brackets raised RecursionError in the parser).
MAX_JSON_DEPTH = 6


@dataclass(frozen=True)
class Limits:
    """What a request may ask the server to process, checked before any work: longer text
    or audio is a 422 (within them, text is still cut to what the tokenizer keeps and audio
    decoded only to the encoder's length), more samples than ``samples`` a 413.
    ``decoding``: requests whose samples are decoded and processed at once; others wait, so
    memory is bounded by that many times a request's own bound, however many arrive."""

    text_chars: int = 100_000
    audio_seconds: float = 60.0
    samples: int = 256
    decoding: int = 2


class RequestError(ValueError):
    """A bad request: ``status`` and a message naming the field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.status, self.field = status, field


class Batcher:
    """Groups queued samples into batches of at most ``max_batch``, waiting at most
    ``max_wait_ms`` for a batch to fill, and runs them on one worker thread."""

    def __init__(self, model: MultimodalModel, max_batch: int, max_wait_ms: float) -> None:
        self.model, self.max_batch, self.max_wait = model, max(1, max_batch), max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future]] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.batches = 0
        self.samples = 0
        self.lock = threading.Lock()

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            samples = [s for s, _ in items]
            try:
                result = await loop.run_in_executor(self.executor, self._predict, samples)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            for i, (_, future) in enumerate(items):
                if not future.done():
                    future.set_result({k: v[i] for k, v in result.items()})

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        """Checked samples ({modality: that modality's tensors for the sample}) -> one
        batch: what ``model.preprocess`` gives for the raw samples."""
        return self.model.processor.collate(samples)

    def _predict(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        model = self.model
        with torch.inference_mode():
            logits = model(move_to(self.collate(samples), model.device)).logits.float()
            out = model.head.task.outputs(logits)
        with self.lock:
            self.batches += 1
            self.samples += len(samples)
        return {k: v.cpu().tolist() for k, v in out.items()}

    async def submit(self, sample: dict[str, Any]) -> dict[str, Any]:
        assert self.queue is not None, "the batcher is not running"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((sample, future))
        return await future


def _decode_base64(value: str, field: str) -> bytes:
    if value.startswith("data:") and "," in value:  # a data URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(422, field, f"expected base64-encoded file bytes ({err})") from err


def loads(text: str | bytes, field: str, status: int = 422) -> Any:
    """JSON of at most ``MAX_JSON_DEPTH`` levels, or a ``RequestError`` naming ``field``."""
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    except ValueError as err:
        raise RequestError(status, field, f"expected JSON ({err})") from None
    else:
        depth = _depth(data, MAX_JSON_DEPTH + 1)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(
            422, field, f"JSON nested more than {MAX_JSON_DEPTH} levels deep (serve.MAX_JSON_DEPTH)"
        )
    return data


def _depth(data: Any, stop: int) -> int:
    """Nesting depth of parsed JSON, walked without recursion, up to ``stop``."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest >= stop:
                return deepest
            stack.extend(
                (v, depth + 1) for v in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def check_sample(
    processor: MultimodalProcessor, raw: Any, where: str, limits: Limits = Limits()
) -> dict[str, Any]:
    """A JSON sample, decoded, checked against ``limits`` and processed once: {modality:
    the processor's tensors for it (batch of one)}, absent modalities left out. A
    ``RequestError`` names the field."""
    if not isinstance(raw, Mapping):
        raise RequestError(
            422, where, f"expected an object of modality values, got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(processor.modalities))
    if unknown:
        raise RequestError(
            422,
            f"{where}.{unknown[0]}",
            f"unknown modality; the model takes {processor.modalities}",
        )
    sample: dict[str, Any] = {}
    for m, value in raw.items():
        field, kind = f"{where}.{m}", processor.kind(m)
        if value is None:
            continue
        if kind in MEDIA and isinstance(value, str):
            value = _decode_base64(value, field)
        elif kind in MEDIA and not isinstance(value, (bytes, bytearray)):
            raise RequestError(
                422, field, f"expected base64 of an encoded {kind} file, got {type(value).__name__}"
            )
        elif kind == "text" and not isinstance(value, str):
            raise RequestError(422, field, f"expected a string, got {type(value).__name__}")
        elif kind == "tabular":
            value = _tabular_row(processor.processors[m].columns, value, field)
        _within(kind, value, field, limits)
        if processor.is_missing(m, value):
            continue
        try:
            sample[m] = processor.processors[m]([value])
        except (ValueError, TypeError, OSError) as err:
            raise RequestError(422, field, str(err).replace("sample 0: ", "")) from err
    return sample


def _within(kind: str, value: Any, field: str, limits: Limits) -> None:
    """A text or an audio file over ``limits`` is refused before it is processed; an audio
    file's length comes from its header (when soundfile reads it; decoding is bounded anyway)."""
    if kind == "text" and len(value) > limits.text_chars:
        raise RequestError(422, field, f"text of {len(value):,} characters is over the limit of "
                                       f"{limits.text_chars:,} (--max-text-chars)")  # fmt: skip
    if kind == "audio" and isinstance(value, (bytes, bytearray)):
        import io

        import soundfile

        try:
            info = soundfile.info(io.BytesIO(bytes(value)))
        except (soundfile.LibsndfileError, RuntimeError, TypeError):
            return
        if info.duration > limits.audio_seconds:
            raise RequestError(422, field, f"audio of {info.duration:.1f} s is over the limit of "
                                           f"{limits.audio_seconds:g} s (--max-audio-seconds)")  # fmt: skip


def _tabular_row(columns: Sequence[str], value: Any, field: str) -> dict[str, Any]:
    """A tabular object with every column the model reads: a column left out is a missing
    value, as ``null`` is; a column the model does not read is an error naming it."""
    if not isinstance(value, Mapping):
        raise RequestError(
            422, field, f"expected an object of column values, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(columns))
    if unknown:
        raise RequestError(
            422,
            f"{field}.{unknown[0]}",
            f"unknown columns {unknown}; the model reads {list(columns)}",
        )
    return {c: value.get(c) for c in columns}


def _version(run: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(run.resolve())}
    lineage = run / RunFolder.lineage
    if lineage.is_file():
        info["version"] = json.loads(lineage.read_text())["version"]
    elif RunFolder(run).run_config.is_file():
        info["version"] = 1
        info["config_hash"] = json.loads(RunFolder(run).run_config.read_text()).get("config_hash")
    return info


def _label_names(run: Path, model: MultimodalModel) -> list[str]:
    from ..experiments.runs import recorded_class_names

    return recorded_class_names(run) or [str(i) for i in range(model.head.num_classes)]


def create_app(
    run: str | Path,
    max_batch: int = 32,
    max_wait_ms: float = 10.0,
    max_payload_mb: float = 10.0,
    trust_remote_code: bool = False,
    allow_unverified: bool = False,
    limits: Limits = Limits(),
) -> Any:
    """The FastAPI application serving the model of ``run`` (a run or save_pretrained folder);
    ``trust_remote_code`` and ``allow_unverified`` are the caller's, as for ``from_pretrained``."""
    run = Path(run)
    trust = {"trust_remote_code": trust_remote_code, "allow_unverified": allow_unverified}
    model = MultimodalModel.from_pretrained(run, **trust).eval()
    processor = model.processor
    batcher = Batcher(model, max_batch, max_wait_ms)
    labels = _label_names(run, model)
    version = _version(run)
    limit, started = int(max_payload_mb * 2**20), time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="transferfuse inference", lifespan=lifespan)
    # Its own threads: at most limits.decoding requests decode at once, and since each
    # thread's freed memory stays in its allocator arena, no more arenas than that grow.
    decoders = ThreadPoolExecutor(max_workers=max(1, limits.decoding), thread_name_prefix="decode")

    def error(status: int, field: str, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message, "field": field})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        with batcher.lock:
            batches, samples = batcher.batches, batcher.samples
        return {"status": "ok", "uptime_s": time.time() - started, "batches": batches, "samples": samples,
                "mean_batch_size": samples / batches if batches else 0.0}  # fmt: skip

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return {
            "modalities": {m: processor.kind(m) for m in processor.modalities}, "task": model.head.task.name,
            "labels": labels, "model": version, "max_batch": batcher.max_batch,
            "max_wait_ms": batcher.max_wait * 1000, "max_payload_bytes": limit, **asdict(limits),
        }  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            body = await _body(request, limit)
            raw = await _parse(request, body, processor)
            many = isinstance(raw, list)
            if many and len(raw) > limits.samples:
                raise RequestError(413, "inputs", f"{len(raw):,} samples is over the limit of "
                                                  f"{limits.samples:,} per request (--max-samples)")  # fmt: skip
            # Decoding and checking run off the event loop, so requests keep arriving
            # meanwhile, on limits.decoding threads (bounded memory).
            samples = await asyncio.get_running_loop().run_in_executor(
                decoders,
                lambda: [check_sample(processor, s, f"inputs[{i}]" if many else "inputs", limits)
                         for i, s in enumerate(raw if many else [raw])],
            )  # fmt: skip
        except RequestError as err:
            return error(err.status, err.field, str(err))
        if not samples:
            return error(422, "inputs", "no samples")
        results = await asyncio.gather(*(batcher.submit(s) for s in samples))
        predictions = [_prediction(r, labels, model.head.task.exclusive_classes) for r in results]
        return {"predictions": predictions if many else predictions[0], "model": version}

    return app


async def _body(request: Any, limit: int) -> bytes:
    """The request body, refused with a 413 once it passes ``limit`` bytes (declared or read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, "body", f"payload of {int(declared):,} bytes is over the limit of {limit:,}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body", f"payload is over the limit of {limit:,} bytes")
    return bytes(body)


def _prediction(result: Mapping[str, Any], labels: list[str], named: bool) -> dict[str, Any]:
    """A sample's answer without its logits; a class answer as ``label`` (one class) with
    its name. A multi-label answer keeps ``labels`` (a list)."""
    entry: dict[str, Any] = {k: v for k, v in result.items() if k != "logits"}
    if "labels" in result and named:
        entry["label"] = entry.pop("labels")
        entry["label_name"] = labels[entry["label"]]
    return entry


async def _parse(request: Any, body: bytes, processor: MultimodalProcessor) -> Any:
    """The ``inputs`` of a JSON body, or one sample from a multipart form."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        return await _form(request, body, kind, processor)
    data = await asyncio.to_thread(loads, body, "body", 400)  # 10 MB parse off the event loop
    if not isinstance(data, Mapping) or "inputs" not in data:
        raise RequestError(422, "inputs", 'expected {"inputs": SAMPLE or [SAMPLE, ...]}')
    return data["inputs"]


async def _form(request: Any, body: bytes, kind: str, processor: MultimodalProcessor) -> Any:
    """One sample from a multipart form; a form that does not parse, or that ends before its
    closing boundary (its last field would be lost), is a 400."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request as StarletteRequest

    try:
        from python_multipart.exceptions import MultipartParseError
    except ImportError:  # python-multipart before 0.0.13
        from multipart.exceptions import MultipartParseError

    boundary = next((p.split("=", 1)[1].strip('" ') for p in kind.split(";")
                     if p.strip().startswith("boundary=")), "")  # fmt: skip
    if not boundary or f"--{boundary}--".encode() not in body:
        raise RequestError(
            400, "body", "a multipart body that does not end with its closing boundary"
        )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, receive).form()
    except (MultipartParseError, MultiPartException, ValueError, KeyError) as err:
        raise RequestError(400, "body", f"a multipart body that does not parse ({err})") from None
    sample: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            sample[key] = await value.read()
        elif key in processor.processors and processor.kind(key) == "tabular":
            sample[key] = loads(value, key)
        else:
            sample[key] = value
    if not sample:
        raise RequestError(422, "body", "a multipart form with no fields")
    return sample


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Load the model (its checks first), say where it is served, and serve it."""
    import uvicorn

    app = create_app(run, **kwargs)
    print(
        f"serving {run} on http://{host}:{port} (POST /predict, GET /health, /metadata)", flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def start_server(
    run: str | Path, *options: str, timeout: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """Start ``multimodal serve --model RUN OPTIONS`` on a free loopback port and wait until
    /health answers; returns the process and its base URL (for tests and load benchmarks)."""
    import socket
    import tempfile
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
    process = subprocess.Popen(
        [sys.executable, "-m", "multimodal.cli", "serve", "--model", str(run), "--port", str(port), *options],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")
