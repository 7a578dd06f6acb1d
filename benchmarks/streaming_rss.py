"""Peak memory of a streaming transfer as the dataset grows: local hub-layout folders of
PNG images, text and tabular columns (no validation or test split: the stream carves them
by row hash), each run as `transfer` in a fresh process whose peak RSS is read from the
kernel (getrusage of the child). The kernel counts a child's memory from the fork on, so
this process imports nothing heavy: the folders are built by a child of their own.

    python benchmarks/streaming_rss.py [--rows 2000,20000] [--map-style] [--out FILE]

--map-style also runs the same transfer with streaming off, for comparison. The folders
are written once under benchmarks/data/streaming-N (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SHARDS = 8
RUN = """
import json, sys
import datasets, transformers
datasets.disable_progress_bars(); transformers.logging.set_verbosity_error()
from multimodal.experiments.transfer import transfer
report = transfer(json.loads(sys.argv[1]))
print(json.dumps({"targets": {t: r.__dict__ for t, r in report.targets.items()}, "source": report.source,
                  "source_test_samples": report.source_test_samples, "stage_seconds": report.stage_seconds}))
"""


def build(folder: Path, rows: int) -> Path:
    """``rows`` synthetic rows over two domains as ``SHARDS`` parquet files of one train split."""
    import datasets

    from multimodal.data.loading import export_dataset
    from multimodal.data.synthetic import make_synthetic

    if (folder / "README.md").is_file():
        return folder
    dsd = make_synthetic(samples_per_domain=rows // 2, domains=2, num_classes=6, image_size=32,
                         audio_seconds=0.25, seed=0)  # fmt: skip
    table = datasets.concatenate_datasets([dsd[s] for s in ("train", "validation", "test")])
    table = table.remove_columns(["audio"]).add_column(
        "id", [f"row-{i:07d}" for i in range(len(table))]
    )
    return export_dataset(datasets.DatasetDict({"train": table}), folder, num_shards=SHARDS)


def config(folder: Path, streaming: bool) -> dict:
    columns = {
        "image": "image",
        "text": "text",
        "tabular": ["tab_0", "tab_1", "tab_2", "tab_3", "tab_channel"],
    }
    return {
        "data": {"path": str(folder), "streaming": streaming, "columns": columns, "row_key": "id"},
        "encoders": {
            "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
            "text": {"name": "hf_text", "max_length": 24, "config": {"model_type": "bert", "hidden_size": 16,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 200,
                     "max_position_embeddings": 64}},
            "tabular": {"name": "tabular_mlp", "numerical": ["tab_0", "tab_1", "tab_2", "tab_3"],
                        "categorical": {"tab_channel": ["web", "store", "phone"]}, "dim": 16},
        },
        "fusion": {"name": "concat", "dim": 32},
        "head": {"task": "classification", "num_classes": 6},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "warmup_ratio": 0.0},
        "transfer": {"source": ["d0"], "target": ["d1"], "k_shot": 4, "adapt": {"epochs": 5, "batch_size": 16},
                     "scratch": {"epochs": 5, "batch_size": 16}},
        "seed": 0,
    }  # fmt: skip


def measure(folder: Path, streaming: bool) -> dict:
    """One transfer in a child process: its peak RSS (MiB), wall time and report."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", RUN, json.dumps(config(folder, streaming))],
                                 stdout=out, stderr=err, text=True)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: its peak RSS
        out.seek(0), err.seek(0)
        if status != 0:
            raise SystemExit(f"transfer failed ({folder}):\n{err.read()[-3000:]}")
        report = json.loads(out.read().strip().splitlines()[-1])
    return {"streaming": streaming, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), **report}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="2000,20000", help="folder sizes (default: 2000,20000)")
    parser.add_argument("--map-style", action="store_true", help="also run with streaming off")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "streaming_rss.json")
    parser.add_argument(
        "--build", type=int, help=argparse.SUPPRESS
    )  # the child that writes a folder
    args = parser.parse_args()
    if args.build:
        build(HERE / "data" / f"streaming-{args.build}", args.build)
        return
    results = []
    for rows in map(int, args.rows.split(",")):
        folder = HERE / "data" / f"streaming-{rows}"
        if not (folder / "README.md").is_file():
            subprocess.run([sys.executable, __file__, "--build", str(rows)], check=True)
        size = sum(p.stat().st_size for p in (folder / "data").iterdir())
        for streaming in (True, False) if args.map_style else (True,):
            result = {
                "rows": rows,
                "parquet_mib": round(size / 2**20, 1),
                **measure(folder, streaming),
            }
            results.append(result)
            print(f"{rows:>7} rows ({result['parquet_mib']} MiB parquet), streaming={streaming}: "
                  f"peak RSS {result['peak_rss_mib']} MiB, {result['wall_s']} s, "
                  f"target test rows {result['targets']['d1']['test_samples']}")  # fmt: skip
    from multimodal.core.provenance import environment

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"results": results, "environment": environment()}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
