"""ONNX export of everything after the processors, and a runtime that uses it.

The exported graph takes the processors' tensors (token ids and attention masks, normalised
pixels, waveforms, tabular values and codes) and one presence flag per modality, and returns
the logits. Batch size is dynamic, and so is the text length. The audio front end (mel
spectrogram, dB) exports as is, but on waveforms padded to the encoder's ``max_seconds``: the
exported audio input has that fixed length (``OnnxModel`` pads). A mixture-of-experts fusion
exports its dense form: every token through its top-k experts with no capacity limit, which
equals PyTorch evaluation whenever no expert overflows its capacity.

Processors stay in Python: the export folder holds the multimodal processor (JSON and
tokenizer files, no weights) under ``processors/`` beside ``model.onnx`` and ``export.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.io import atomic_dir, verify_folder, write_checksums, write_json_atomic
from ..modeling.model import Batch, MultimodalModel
from ..modeling.processing import MultimodalProcessor
from ..modeling.tasks import create_task

ONNX_NAME = "model.onnx"
EXPORT_NAME = "export.json"
SEQUENCE_KEYS = {"input_ids", "attention_mask", "token_type_ids"}


def example_value(processor: Any) -> Any:
    """A raw value a modality's processor accepts, for tracing."""
    if processor.modality == "image":
        return Image.new("RGB", (32, 32), (128, 64, 32))
    if processor.modality == "audio":
        rate = processor.sample_rate
        t = np.arange(processor.max_length) / rate
        return {
            "array": (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
            "sampling_rate": rate,
        }
    if processor.modality == "text":
        return "an example sentence for tracing the graph"
    if processor.modality == "tabular":
        row: dict[str, Any] = {c: 0.5 for c in processor.numerical}
        for column, spec in processor.categorical.items():
            row[column] = spec[0] if isinstance(spec, list) else 0
        return row
    raise ValueError(f"no example value for a {processor.modality!r} processor")


def _audio_lengths(processor: MultimodalProcessor) -> dict[str, int]:
    """The exported waveform length of each audio modality (its processor's maximum)."""
    return {m: max(p.max_length, p.min_length) for m, p in processor.processors.items()
            if p.modality == "audio"}  # fmt: skip


def pad_audio(processor: MultimodalProcessor, batch: Batch) -> Batch:
    """Pad every audio waveform to its processor's maximum length (the exported input size)."""
    for m, width in _audio_lengths(processor).items():
        wave = batch[m]["waveform"]
        batch[m] = {**batch[m], "waveform": nn.functional.pad(wave, (0, width - wave.shape[1]))}
    return batch


class _Graph(nn.Module):
    """The model as a function of flat tensors, in ``layout`` order, then presence flags."""

    def __init__(self, model: MultimodalModel, layout: Sequence[tuple[str, Sequence[str]]]) -> None:
        super().__init__()
        self.model = model
        self.layout = [(m, list(keys)) for m, keys in layout]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch: Batch = {"present": {}}
        i = 0
        for m, keys in self.layout:
            batch[m] = {k: tensors[i + j] for j, k in enumerate(keys)}
            i += len(keys)
        for m, _ in self.layout:
            batch["present"][m] = tensors[i]
            i += 1
        return self.model(batch).logits


def _flat(batch: Batch, layout: Sequence[tuple[str, Sequence[str]]]) -> list[torch.Tensor]:
    return [batch[m][k] for m, keys in layout for k in keys] + [
        batch["present"][m] for m, _ in layout
    ]


class ExportMismatchError(RuntimeError):
    """An exported graph whose logits differ from the PyTorch model's beyond tolerance."""


def export_onnx(
    model: MultimodalModel, out: str | Path, opset: int | None = None, atol: float = 1e-4
) -> Path:
    """Write ``model.onnx``, ``export.json`` and ``processors/`` to ``out`` (atomically),
    after onnxruntime's logits on example samples agreed with the model's in eval mode to
    ``atol``: an export that disagrees is an ``ExportMismatchError`` naming the difference,
    and nothing is written."""
    model = model.eval()
    processor = model.processor
    samples = [{m: example_value(p) for m, p in processor.processors.items()} for _ in range(2)]
    samples[1] = {**samples[1], **{m: "a second, longer example sentence with more words in it"
                                   for m, enc in model.encoders.items() if enc.modality == "text"}}  # fmt: skip
    batch = pad_audio(processor, processor(samples))
    layout = [(m, sorted(batch[m])) for m in model.modalities]
    names = [f"{m}.{k}" for m, keys in layout for k in keys] + [f"present.{m}" for m, _ in layout]
    args = _flat(batch, layout)
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    dynamic = []
    for m, key in [(m, k) for m, keys in layout for k in keys] + [
        (m, "present") for m, _ in layout
    ]:
        dims: dict[int, Any] = {0: batch_dim}
        if key in SEQUENCE_KEYS:
            dims[1] = torch.export.Dim(f"{m}_length", min=1, max=model.encoders[m].max_length)
        dynamic.append(dims)
    from tqdm.auto import tqdm

    # a large model traces for minutes: say which of the three stages is running
    bar = tqdm(total=3, desc="ONNX export", unit="stage", bar_format="{desc}: {n}/{total} stages "
               "[{elapsed}]{postfix}", postfix="tracing and converting (torch.export)")  # fmt: skip
    with atomic_dir(out) as tmp, bar:
        kwargs = {"opset_version": opset} if opset else {}
        torch.onnx.export(
            _Graph(model, layout).eval(), tuple(args), str(tmp / ONNX_NAME), input_names=names,
            output_names=["logits"], dynamic_shapes=(tuple(dynamic),), dynamo=True, **kwargs,
        )  # fmt: skip
        bar.update()
        bar.set_postfix_str("writing the processors")
        processor.save_pretrained(tmp / "processors")
        write_json_atomic(
            tmp / EXPORT_NAME,
            {
                "format": "onnx", "inputs": names, "layout": layout, "outputs": ["logits"],
                "task": model.head.task.name, "num_classes": model.head.num_classes,
                "temperature": model.head.task.temperature,
                "audio_length": _audio_lengths(processor),
            },
        )  # fmt: skip
        write_checksums(tmp)
        bar.update()
        bar.set_postfix_str("checking onnxruntime against PyTorch")
        difference = export_difference(model, tmp, samples)
        bar.update()
        if difference > atol:
            raise ExportMismatchError(
                f"the exported graph's logits differ from the model's by up to {difference:.3g} "
                f"(max |difference| on {len(samples)} example samples; tolerance {atol:g}): not written"
            )
    return Path(out)


def export_difference(
    model: MultimodalModel, folder: Path, samples: Sequence[Mapping[str, Any]]
) -> float:
    """Max |logit difference| between onnxruntime on the export in ``folder`` and the model."""
    with torch.no_grad():
        expected = model.predict(samples)["logits"].numpy()
    return float(np.abs(OnnxModel(folder).predict(samples)["logits"] - expected).max())


class OnnxModel:
    """Python processors + onnxruntime: ``predict`` takes raw samples as ``MultimodalModel``."""

    def __init__(
        self,
        folder: str | Path,
        providers: Sequence[str] | None = None,
        allow_unverified: bool = False,
    ) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        verify_folder(folder, allow_unverified)
        self.meta = json.loads((folder / EXPORT_NAME).read_text())
        self.layout = [(m, keys) for m, keys in self.meta["layout"]]
        self.processor = MultimodalProcessor.from_pretrained(folder / "processors")
        self.session = ort.InferenceSession(
            str(folder / ONNX_NAME), providers=list(providers or ["CPUExecutionProvider"])
        )
        # The exported model's task, with the temperature calibration fitted.
        self.task = create_task(self.meta["task"], self.meta["num_classes"],
                                temperature=self.meta.get("temperature", 1.0))  # fmt: skip

    def feed(self, batch: Batch) -> dict[str, np.ndarray]:
        """The graph's inputs for a preprocessed batch (the ``MultimodalProcessor``'s output)."""
        batch = pad_audio(self.processor, {k: v for k, v in batch.items()})
        return {
            n: t.numpy()
            for n, t in zip(self.meta["inputs"], _flat(batch, self.layout), strict=True)
        }

    def logits(self, batch: Batch) -> np.ndarray:
        """Logits for a preprocessed batch (the ``MultimodalProcessor``'s output)."""
        return self.session.run(None, self.feed(batch))[0]

    def predict(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        logits = self.logits(self.processor([dict(s) for s in samples]))
        return {k: v.numpy() for k, v in self.task.outputs(torch.from_numpy(logits)).items()}
