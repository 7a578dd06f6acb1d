"""`multimodal evaluate` and `predict`: a saved model on a split or on files."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    add_model,
    add_overrides,
    add_overwrite,
    add_split,
    config_split,
    in_domain,
    load_model,
    model_and_split,
    positive_int,
    refuse_to_replace,
    warn_absent_modalities,
)

PREDICTION_FORMATS = (".csv", ".jsonl", ".json")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg"}


def _file_samples(model: Any, files: Sequence[str], each: bool = False) -> list[dict[str, Any]]:
    """The files as samples, each modality told by the extension: by default all of them
    make one sample (an image, a clip, a .txt's whole text, a one-row .csv); with ``each``,
    one sample per file (a .txt one per line, a .csv one per row). ``__files__`` names the
    files behind a sample."""
    read = [(name, _read_file(model, Path(name), each)) for name in files]
    if each:
        return [{**s, "__files__": [name]} for name, samples in read for s in samples]
    sample: dict[str, Any] = {"__files__": list(files)}
    source: dict[str, str] = {}
    for name, samples in read:
        if len(samples) != 1:
            raise ValueError(f"{name} holds {len(samples)} samples; with several files in one sample "
                             "each file gives one value (pass --each for one sample per file or row)")  # fmt: skip
        for m, value in samples[0].items():
            if m in source:
                raise ValueError(f"{source[m]} and {name} both give {m!r}; one sample takes one "
                                 "value per modality (pass --each for one sample per file)")  # fmt: skip
            sample[m], source[m] = value, name
    return [sample]


def _read_file(model: Any, path: Path, each: bool) -> list[dict[str, Any]]:
    by_kind = {e.modality: m for m, e in model.encoders.items()}
    ext = path.suffix.lower()
    if ext == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            _check_csv_columns(path, list(reader.fieldnames or []), model)
            return [{m: row.get(m) for m in model.modalities if m in row} | _tabular_from(row, model)
                    for row in reader]  # fmt: skip
    if ext in IMAGE_EXT and "image" in by_kind:
        return [{by_kind["image"]: str(path)}]
    if ext in AUDIO_EXT and "audio" in by_kind:
        return [{by_kind["audio"]: str(path)}]
    if ext == ".txt" and "text" in by_kind:
        if not each:
            return [{by_kind["text"]: path.read_text().strip()}]
        return [
            {by_kind["text"]: line.rstrip("\n")}
            for line in path.read_text().splitlines()
            if line.strip()
        ]
    raise ValueError(
        f"{path}: no modality of this model reads {ext or 'files without an extension'} files"
    )


def _check_csv_columns(path: Path, header: list[str], model: Any) -> None:
    """A .csv must give some modality of the model: a column named after it, or every column
    of a tabular encoder; else name what the model reads (the server answers 422 here)."""
    tabular = {m: list(e.columns) for m, e in model.encoders.items() if e.modality == "tabular"}
    for m, columns in tabular.items():
        missing = [c for c in columns if c not in header]
        if missing and len(missing) < len(columns):
            raise ValueError(f"{path}: tabular modality {m!r} needs the columns {columns}; "
                             f"missing {missing}")  # fmt: skip
    gives = [m for m in model.modalities if m in header or (m in tabular and
                                                           set(tabular[m]) <= set(header))]  # fmt: skip
    if not gives:
        reads = [f"{m} (columns {tabular[m]})" if m in tabular else f"{m} (a column {m!r})"
                 for m in model.modalities]  # fmt: skip
        raise ValueError(f"{path}: none of its columns {header} is read by this model; it reads "
                         f"{', '.join(reads)}")  # fmt: skip


def _tabular_from(row: dict[str, str], model: Any) -> dict[str, Any]:
    out = {}
    for m, enc in model.encoders.items():
        if enc.modality == "tabular" and all(c in row for c in enc.columns):
            out[m] = {
                c: (float(row[c]) if c in enc.numerical and row[c] != "" else row[c] or None)
                for c in enc.columns
            }
    return out


def default_report_folder(args: argparse.Namespace) -> str:
    """evaluation-SPLIT, or evaluation-SPLIT-D1+D2 for --domain D1 --domain D2: each
    domain's report keeps its own folder."""
    domains = "+".join(args.domain or []).replace("/", "_")
    return f"evaluation-{args.split}" + (f"-{domains}" if domains else "")


def run_evaluate(args: argparse.Namespace) -> int:
    from ..analysis.evaluation import (
        REPORT_FILES,
        evaluation_report,
        format_report,
        write_report,
    )
    from ..experiments.runs import recorded_class_names

    out = Path(args.out) if args.out else Path(args.model) / default_report_folder(args)
    refuse_to_replace([out / name for name in REPORT_FILES], args.overwrite)
    model, spec, ds = model_and_split(args)
    seen = in_domain(args, ds)
    report = evaluation_report(model, ds, spec, args.batch_size, recorded_class_names(args.model))
    report["in_domain"] = seen
    print(format_report(report, seen))
    paths = write_report(report, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_evaluate(sub: Any) -> None:

    p = sub.add_parser(
        "evaluate",
        help="evaluate a saved model on a dataset split: metrics overall, per domain and per "
        "class, and the confusion matrix",
    )
    add_model(p)
    add_split(p, "evaluate")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass")
    p.add_argument(
        "--out",
        help="where evaluation.json, confusion.json, confusion.png and reliability.png go "
        "(default: MODEL/evaluation-SPLIT, or MODEL/evaluation-SPLIT-DOMAIN with --domain)",
    )
    add_overwrite(p, "the report files")
    add_overrides(p)
    p.set_defaults(func=run_evaluate)


def run_calibrate(args: argparse.Namespace) -> int:
    from ..analysis.calibration import calibration_metrics, fit_temperature
    from ..analysis.evaluation import predictions
    from ..core.io import write_json_atomic
    from ..core.run_folder import RunFolder
    from ..modeling.card import DomainResult, update_card

    out = Path(args.out)
    report_path = out.with_name(out.name + ".calibration.json")
    refuse_to_replace([out, report_path], args.overwrite)
    model, spec, ds = model_and_split(args)
    model.head.task.require_classes("calibration (temperature scaling of class probabilities)")
    logits, labels, _ = predictions(model, ds, spec, args.batch_size)
    temperature = fit_temperature(logits, labels)
    before, after = (
        calibration_metrics(logits, labels),
        calibration_metrics(logits, labels, temperature),
    )
    model.head.task.temperature = temperature
    out = model.save_pretrained(args.out)
    where = f"split {args.split!r}" + (f", domains {args.domain}" if args.domain else "")
    report = {"temperature": temperature, "fitted_on": where, "rows": len(labels),
              "before": before, "after": after, "model": str(args.model)}  # fmt: skip
    write_json_atomic(report_path, report)
    fitted_on = "+".join(args.domain) if args.domain else f"{args.split} split"
    results = [DomainResult(fitted_on, "calibrated", k, after[k]) for k in ("ece", "nll")]
    update_card(
        out, calibration=report, parent=RunFolder(args.model).saved_model(), results=results
    )
    print(f"temperature {temperature:.3f} fitted on {len(labels)} rows ({where}): NLL "
          f"{before['nll']:.4f} -> {after['nll']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
          f"Brier {before['brier']:.4f} -> {after['brier']:.4f}; predictions unchanged")  # fmt: skip
    print(f"wrote {out} (its probabilities are softmax(logits / {temperature:.3f}))")
    return 0


def add_calibrate(sub: Any) -> None:

    p = sub.add_parser(
        "calibrate",
        help="fit a temperature on a labelled split (the source validation split, say) and save "
        "a copy of the model whose probabilities use it",
    )
    add_model(p)
    add_split(p, "fit the temperature")
    p.set_defaults(split="validation")
    p.add_argument("--out", required=True, help="the calibrated model's folder (new or empty)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier saved model in --out (a folder holding anything else is "
        "still refused)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass")
    add_overrides(p)
    p.set_defaults(func=run_calibrate)


def run_predict(args: argparse.Namespace) -> int:
    from ..data.collate import RowView
    from ..experiments.runs import recorded_class_names

    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.suffix.lower() not in PREDICTION_FORMATS:
        raise ValueError(f"--out {args.out}: predictions are written as "
                         f"{', '.join(PREDICTION_FORMATS)}; give a file with one of these endings, "
                         "or leave --out out to print JSON lines")  # fmt: skip
    if not args.config and not args.files:
        raise ValueError("predict needs --config (a dataset split to predict on) or --files")
    if out_path is not None:
        refuse_to_replace([out_path], args.overwrite)
    model = load_model(args)
    if args.config:
        spec, ds = config_split(args)
        warn_absent_modalities(model, spec)
        in_domain(args, ds)
        view = RowView(ds, spec, args.split)
        samples = [view[i] for i in range(len(view))]
    else:
        samples = _file_samples(model, args.files, args.each)
    names = recorded_class_names(args.model)
    records = []
    for start in range(0, len(samples), args.batch_size):
        chunk = samples[start : start + args.batch_size]
        out = model.predict([{m: s.get(m) for m in model.modalities} for s in chunk])
        records += [_record(start + i, s, out, i, names) for i, s in enumerate(chunk)]
    if out_path is None:
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in records))
        return 0
    _write_records(records, out_path)
    print(f"wrote {len(records)} predictions to {args.out}")
    return 0


def _record(index: int, sample: dict[str, Any], out: dict[str, Any], i: int,
            names: list[str] | None) -> dict[str, Any]:  # fmt: skip
    """One prediction: where the sample came from (files, or row and domain), the predicted
    class with its name, the probabilities, and the true label when the split has one."""
    record: dict[str, Any] = {"index": index}
    if "__files__" in sample:
        record["files"] = " ".join(sample["__files__"])
    if "__row__" in sample:
        record.update(row=sample["__row__"], domain=sample.get("domain"))
    name = lambda c: names[c] if names and isinstance(c, int) and 0 <= c < len(names) else None  # noqa: E731
    if "labels" in out:
        predicted = out["labels"][i].tolist()
        record["prediction"] = predicted
        if names:
            record["class"] = name(predicted)
        record["probabilities"] = [round(p, 6) for p in out["probs"][i].tolist()]
    else:
        record["prediction"] = out["predictions"][i].tolist()
    if sample.get("label") is not None:
        record["true"] = sample["label"]
        if names:
            record["true_class"] = name(sample["label"])
    return record


def _write_records(records: list[dict[str, Any]], out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".csv":
        with open(out_path, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(dict.fromkeys(k for r in records for k in r))
            )
            writer.writeheader()
            writer.writerows(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                for r in records
            )
    elif out_path.suffix.lower() == ".json":
        out_path.write_text(json.dumps(records, indent=1) + "\n")
    else:
        out_path.write_text("".join(json.dumps(r) + "\n" for r in records))


def add_predict(sub: Any) -> None:

    p = sub.add_parser("predict", help="predict with a saved model on a dataset split or files")
    add_model(p)
    add_split(p, "predict", required=False)
    p.add_argument(
        "--files",
        nargs="+",
        help="files that make one sample together, one per modality: an image, an audio clip, "
        "a .txt (its text), a one-row .csv (tabular columns)",
    )
    p.add_argument(
        "--each",
        action="store_true",
        help="one sample per file instead (a .txt gives one per line, a .csv one per row)",
    )
    p.add_argument("--out", help="predictions file: .csv, .jsonl (a record per line) or .json "
                   "(one list); without it, JSON lines on stdout")  # fmt: skip
    add_overwrite(p, "the --out file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass")
    add_overrides(p)
    p.set_defaults(func=run_predict)
