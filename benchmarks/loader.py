"""Loader throughput: samples/s through decode + processors + collate.

python benchmarks/loader.py [--samples-per-domain 500] [--workers 0 2] [--batch-size 64]
python benchmarks/loader.py --real-media [--rows 300] [--epochs 3] [--out loader.json]

The default case reads the synthetic data. --real-media writes a hub-layout folder of
encoded media (PNG images of 256 x 256, stereo FLAC at 44.1 kHz, 3 s) and times each epoch
with the processed-row cache (data.cache_processed, the default) and without it: the first
epoch decodes (and, cached, writes the processed rows), later ones read tensors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import multimodal as mm

MODEL = {
    "encoders": {
        "text": {"name": "hf_text", "config": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 1000}},
        "image": {"name": "timm_image", "model_name": "resnet18", "img_size": 64},
        "audio": {"name": "audio_cnn", "channels": [16, 32, 64], "sample_rate": 8000},
        "tabular": {"name": "tabular_mlp", "numerical": ["tab_0", "tab_1", "tab_2", "tab_3"],
                    "categorical": {"tab_channel": ["web", "store", "phone"]}},
    },
    "fusion": {"name": "concat", "dim": 64},
    "head": {"task": "classification", "num_classes": 4},
}  # fmt: skip


REAL_MEDIA_MODEL = {
    "encoders": {
        "text": MODEL["encoders"]["text"],
        "image": {"name": "timm_image", "model_name": "resnet18", "img_size": 128},
        "audio": {"name": "audio_cnn", "channels": [16, 32, 64], "sample_rate": 16000, "max_seconds": 3.0},
    },
    "fusion": {"name": "concat", "dim": 64},
    "head": {"task": "classification", "num_classes": 4},
}  # fmt: skip


def write_real_media(folder: Path, rows: int, seed: int = 0) -> Path:
    """A hub-layout folder (parquet with embedded bytes) of PNG, FLAC, text and a label."""
    import io

    import datasets
    import numpy as np
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, clips, texts, labels = [], [], [], []
    grid = np.linspace(0, 255, 256, dtype=np.float32)
    for _ in range(rows):
        label = int(rng.integers(0, 4))
        pixels = (grid[None, :, None] * (label + 1) / 4 + rng.normal(0, 40, (256, 256, 3))).clip(
            0, 255
        )
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
        t = np.arange(3 * 44100) / 44100
        wave = 0.3 * np.sin(2 * np.pi * 220 * (label + 1) * t)[:, None] + rng.normal(
            0, 0.05, (t.size, 2)
        )
        buf = io.BytesIO()
        soundfile.write(buf, wave.astype(np.float32), 44100, format="FLAC")
        clips.append({"bytes": buf.getvalue(), "path": None})
        texts.append(" ".join(f"w{int(w)}" for w in rng.integers(0, 50, 20)) + f" class{label}")
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "audio": datasets.Audio(),
                                  "text": datasets.Value("string"), "label": datasets.Value("int64")})  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"image": images, "audio": clips, "text": texts, "label": labels}, features=features
    )
    return mm.data.export_dataset(datasets.DatasetDict(train=ds), folder)


def real_media(rows: int, epochs: int, batch_size: int, workers: int) -> dict:
    """Samples/s per epoch on encoded media, with and without the processed-row cache."""
    import dataclasses
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_real_media(Path(tmp) / "media", rows)
        spec = mm.DatasetSpec(path=str(folder), columns={m: m for m in ("image", "audio", "text")}, domain=None,
                              validation_fraction=0, test_fraction=0)  # fmt: skip
        dsd = mm.load_dataset(spec)
        view = mm.data.RowView(dsd["train"], spec, "train")
        model = mm.build_model(REAL_MEDIA_MODEL, [view[i] for i in range(min(len(view), 64))])
        result: dict = {"rows": len(view), "batch_size": batch_size, "num_workers": workers}
        for name, cached in (("uncached", False), ("cached", True)):
            start = time.perf_counter()  # a cached loader processes every row when it is made
            loader = mm.make_loader(dsd["train"], model, dataclasses.replace(spec, cache_processed=cached),
                                    "train", batch_size=batch_size, num_workers=workers, shuffle=True)  # fmt: skip
            rates = []
            for epoch in range(epochs):
                loader.sampler.set_epoch(epoch)
                n = sum(len(batch["row"]) for batch in loader)
                rates.append(n / (time.perf_counter() - start))
                start = time.perf_counter()
            result[name] = {"epoch_samples_per_s": rates, "later_over_first": rates[-1] / rates[0]}
            print(f"{name:>8}: " + ", ".join(f"epoch {e + 1} {r:.0f}/s" for e, r in enumerate(rates))
                  + f"  (last / first {rates[-1] / rates[0]:.1f}x)")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples-per-domain", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--real-media", action="store_true", help="PNG + 44.1 kHz FLAC rows instead"
    )
    parser.add_argument("--rows", type=int, default=300, help="--real-media rows (default: 300)")
    parser.add_argument("--epochs", type=int, default=3, help="--real-media epochs (default: 3)")
    args = parser.parse_args()
    if args.real_media:
        result = real_media(args.rows, args.epochs, args.batch_size, args.workers[0])
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    spec = mm.DatasetSpec(options={"samples_per_domain": args.samples_per_domain})
    start = time.perf_counter()
    dsd = mm.load_dataset(spec)
    print(
        f"generated {sum(len(d) for d in dsd.values())} samples in {time.perf_counter() - start:.1f} s"
    )
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(MODEL, [view[i] for i in range(min(len(view), 500))])
    results = []
    for workers in args.workers:
        loader = mm.make_loader(
            dsd["train"],
            model,
            spec,
            "train",
            batch_size=args.batch_size,
            num_workers=workers,
            shuffle=True,
        )
        start, n = time.perf_counter(), 0
        with torch.no_grad():
            for batch in loader:
                n += len(batch["row"])
        elapsed = time.perf_counter() - start
        results.append(
            {"num_workers": workers, "samples": n, "seconds": elapsed, "samples_per_s": n / elapsed}
        )
        print(
            f"num_workers={workers}: {n} samples in {elapsed:.2f} s = {n / elapsed:.0f} samples/s"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
