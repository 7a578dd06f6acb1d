"""`multimodal evaluate` and `predict`: a saved model on a split or on files."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    add_model,
    add_overrides,
    add_split,
    config_split,
    in_domain,
    model_and_split,
)


def _file_samples(model: Any, files: Sequence[str]) -> list[dict[str, Any]]:
    """One sample per file, its modality told by the extension; a CSV gives one per row."""
    kinds = {m: e.modality for m, e in model.encoders.items()}
    by_kind = {v: k for k, v in kinds.items()}
    image_ext, audio_ext = (
        {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
        {".wav", ".flac", ".mp3", ".ogg"},
    )
    samples: list[dict[str, Any]] = []
    for name in files:
        path = Path(name)
        ext = path.suffix.lower()
        if ext == ".csv":
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    samples.append(
                        {m: row.get(m) for m in model.modalities if m in row}
                        | _tabular_from(row, model)
                    )
        elif ext in image_ext and "image" in by_kind:
            samples.append({by_kind["image"]: str(path)})
        elif ext in audio_ext and "audio" in by_kind:
            samples.append({by_kind["audio"]: str(path)})
        elif ext == ".txt" and "text" in by_kind:
            samples += [
                {by_kind["text"]: line.rstrip("\n")}
                for line in path.read_text().splitlines()
                if line.strip()
            ]
        else:
            raise ValueError(
                f"{path}: no modality of this model reads {ext or 'files without an extension'} files"
            )
    return samples


def _tabular_from(row: dict[str, str], model: Any) -> dict[str, Any]:
    out = {}
    for m, enc in model.encoders.items():
        if enc.modality == "tabular" and all(c in row for c in enc.columns):
            out[m] = {
                c: (float(row[c]) if c in enc.numerical and row[c] != "" else row[c] or None)
                for c in enc.columns
            }
    return out


def run_evaluate(args: argparse.Namespace) -> int:
    from ..engine import evaluate

    model, spec, ds = model_and_split(args)
    in_domain(args, ds)
    metrics = evaluate(model, ds, spec, args.batch_size)
    print(json.dumps(metrics, indent=2))
    return 0


def add_evaluate(sub: Any) -> None:

    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset split")
    add_model(p)
    add_split(p, "evaluate")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    add_overrides(p)
    p.set_defaults(func=run_evaluate)


def run_predict(args: argparse.Namespace) -> int:
    from ..data.collate import RowView
    from ..modeling.model import MultimodalModel

    model = MultimodalModel.from_pretrained(args.model)
    if args.config:
        spec, ds = config_split(args)
        view = RowView(ds, spec, args.split)
        samples = [view[i] for i in range(len(view))]
    elif args.files:
        samples = _file_samples(model, args.files)
    else:
        raise SystemExit("predict needs --config (a dataset spec) or files")
    records = []
    for start in range(0, len(samples), args.batch_size):
        chunk = samples[start : start + args.batch_size]
        out = model.predict([{m: s.get(m) for m in model.modalities} for s in chunk])
        for i, s in enumerate(chunk):
            record = {"index": start + i}
            if "__row__" in s:
                record["row"] = s["__row__"]
            if "labels" in out:
                record["prediction"] = out["labels"][i].tolist()
                record["probabilities"] = [round(p, 6) for p in out["probs"][i].tolist()]
            else:
                record["prediction"] = out["predictions"][i].tolist()
            records.append(record)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".csv":
        with open(out_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                for r in records
            )
    else:
        out_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} predictions to {out_path}")
    return 0


def add_predict(sub: Any) -> None:

    p = sub.add_parser("predict", help="predict with a saved model on a dataset split or files")
    add_model(p)
    add_split(p, None, required=False)
    p.add_argument("--files", nargs="+", help="images, audio, a .txt (one text a line) or a .csv")
    p.add_argument("--out", required=True, help="predictions file, .csv or .jsonl")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    add_overrides(p)
    p.set_defaults(func=run_predict)
