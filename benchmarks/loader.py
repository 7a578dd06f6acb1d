"""Loader throughput on the synthetic data: samples/s through decode + processors + collate.

python benchmarks/loader.py [--samples-per-domain 500] [--workers 0 2] [--batch-size 64]
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples-per-domain", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
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
