"""The ``multimodal`` command line: list, train, evaluate, predict, transfer, export-dataset."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import encoders
import fusion


def _list(args: argparse.Namespace) -> int:
    print("encoders:")
    for name in encoders.list_encoders(args.pattern):
        print(f"  {name}")
    print("fusions:")
    for name in fusion.list_fusions(args.pattern):
        print(f"  {name}")
    return 0


def _export_dataset(args: argparse.Namespace) -> int:
    from .config import parse_value
    from .data import DatasetSpec, export_dataset, load_dataset

    spec = DatasetSpec.from_yaml(args.spec) if args.spec else DatasetSpec(path=args.path)
    for item in args.option:
        key, _, value = item.partition("=")
        spec.options[key] = parse_value(value)
    folder = export_dataset(load_dataset(spec), args.out)
    print(f"wrote {folder} (load it back with multimodal.load_dataset({str(folder)!r}))")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .runs import train_run

    config = load_run_config(args.config, args.overrides)
    out = args.output_dir or config.get("output_dir") or "runs/train"
    summary = train_run(config, out, resume_from=args.resume_from)
    metric = next(k for k in summary if k.startswith("validation_"))
    print(f"best {metric.replace('_', ' ')}: {summary[metric]:.4f} at step {summary['best_step']}")
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    if summary["skipped_steps"]:
        print(f"skipped {summary['skipped_steps']} steps with a non-finite loss or gradient")
    print(f"wall time {summary['wall_time_s']:.1f} s; run folder {out}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .runs import format_diff, reproduce

    result = reproduce(args.run_dir, args.output_dir)
    print(format_diff(result))
    ok = result["max_abs_diff"] <= args.tolerance
    print(("reproduced" if ok else "NOT reproduced") + f" (tolerance {args.tolerance:g}); "
          f"wrote {Path(result['output_dir']) / 'reproduction.json'}")  # fmt: skip
    return 0 if ok else 1


def _config_split(args: argparse.Namespace) -> tuple[Any, Any]:
    """The spec and the --split (optionally --domain) of --config's data, with overrides."""
    from .config import load_run_config
    from .data import DatasetSpec, load_dataset, select_domains

    config = load_run_config(args.config, args.overrides)
    spec = DatasetSpec.from_dict(config.get("data") or {})
    ds = load_dataset(spec)[args.split]
    if args.domain:
        ds = select_domains(ds, args.domain)
    return spec, ds


def _model_and_split(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The saved model of --model and the --split (optionally --domain) of --config's data."""
    from .model import MultimodalModel

    return MultimodalModel.from_pretrained(args.model), *_config_split(args)


def _evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate

    model, spec, ds = _model_and_split(args)
    metrics = evaluate(model, ds, spec, args.batch_size)
    print(json.dumps(metrics, indent=2))
    return 0


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


def _predict(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .data import DatasetSpec, RowView, load_dataset
    from .model import MultimodalModel

    model = MultimodalModel.from_pretrained(args.model)
    if args.config:
        config = load_run_config(args.config, args.overrides)
        spec = DatasetSpec.from_dict(config.get("data") or {})
        view = RowView(load_dataset(spec)[args.split], spec, args.split)
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


def _robustness(args: argparse.Namespace) -> int:
    from ._io import write_json_atomic
    from .model import MultimodalModel
    from .robustness import format_missing_table, missing_modality_table

    model, spec, ds = _model_and_split(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    rows = missing_modality_table(model, ds, spec, args.batch_size, args.subsets)
    print(format_missing_table(rows))
    result: dict[str, Any] = {"missing_modalities": rows}
    if args.corruptions:
        from .robustness import (
            corruption_curves,
            effective_robustness,
            format_corruption_table,
            plot_corruption_curves,
        )

        curves = corruption_curves(model, ds, spec, args.batch_size)
        if args.reference:
            reference = MultimodalModel.from_pretrained(args.reference)
            main = "accuracy" if "accuracy" in curves[0] else "rmse"
            for row, ref in zip(
                curves, corruption_curves(reference, ds, spec, args.batch_size), strict=True
            ):
                row["effective_robustness"] = effective_robustness(row[main], ref[main])
        print()
        print(format_corruption_table(curves))
        result["corruptions"] = curves
        if out is not None:
            print(f"wrote {plot_corruption_curves(curves, out / 'corruptions.png')}")
    if args.adversarial:
        from .adversarial import adversarial_table, format_adversarial_table

        budgets = dict(args.budget) if args.budget else None
        table = adversarial_table(
            model, ds, spec, budgets, steps=args.pgd_steps, batch_size=args.batch_size
        )
        print()
        print(format_adversarial_table(table))
        result["adversarial"] = table
    if out is not None:
        write_json_atomic(out / "robustness.json", result)
        print(f"wrote {out / 'robustness.json'}")
    return 0


def parse_budget(text: str) -> tuple[str, float]:
    """'image=0.03' -> ("image", 0.03)."""
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--budget expects MODALITY=RADIUS, e.g. image=0.0157, got {text!r}"
        ) from None


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain, format_explanation, write_explanation

    model, spec, ds = _model_and_split(args)
    if args.max_samples and len(ds) > args.max_samples:
        ds = ds.select(range(args.max_samples))
    result = explain(model, ds, spec, args.batch_size, args.ig_steps, args.sample)
    print(format_explanation(result))
    paths = write_explanation(result, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from ._io import write_json_atomic
    from .ensemble import evaluate_ensemble, evaluate_soup, format_ensemble_table
    from .model import MultimodalModel

    models = [MultimodalModel.from_pretrained(path) for path in args.models]
    spec, ds = _config_split(args)
    rows = evaluate_ensemble(models, ds, spec, args.batch_size, names=args.models)
    if args.soup or args.save_soup:
        soup, row = evaluate_soup(models, ds, spec, args.batch_size)
        rows.append(row)
        if args.save_soup:
            soup.save_pretrained(args.save_soup)
            print(f"saved the soup to {args.save_soup}")
    print(format_ensemble_table(rows))
    if args.out:
        write_json_atomic(args.out, {"split": args.split, "domains": args.domain, "rows": rows})
        print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from .export import OnnxModel, example_value, export_onnx
    from .model import MultimodalModel

    model = MultimodalModel.from_pretrained(args.model)
    out = Path(args.out or Path(args.model) / "onnx")
    export_onnx(model, out, args.opset)
    samples = [{m: example_value(e) for m, e in model.encoders.items()}] * 3
    with torch.no_grad():
        expected = model.predict(samples)["logits"].numpy()
    got = OnnxModel(out).predict(samples)["logits"]
    print(f"exported {out / 'model.onnx'}; onnxruntime vs PyTorch max |logit diff| "
          f"{float(abs(got - expected).max()):.2e} on {len(samples)} examples")  # fmt: skip
    return 0


def _spec_split(path: str, split: str, domains: Sequence[str] | None) -> tuple[Any, Any]:
    """(DatasetSpec, the split) of a dataset spec YAML or a run config's data section."""
    import yaml

    from .data import DatasetSpec, load_dataset, select_domains

    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    spec = DatasetSpec.from_dict(loaded.get("data", loaded) if isinstance(loaded, dict) else {})
    ds = load_dataset(spec)[split]
    return spec, select_domains(ds, list(domains)) if domains else ds


def _drift(args: argparse.Namespace) -> int:
    from .drift import detect_drift, drift_markdown, write_drift_report
    from .model import MultimodalModel

    model = MultimodalModel.from_pretrained(args.model)
    ref_spec, reference = _spec_split(args.reference, args.reference_split, args.reference_domain)
    inc_spec, incoming = _spec_split(args.incoming, args.incoming_split, args.incoming_domain)
    report = detect_drift(model, reference, incoming, ref_spec, inc_spec, alpha=args.alpha,
                          max_samples=args.max_samples, permutations=args.permutations)  # fmt: skip
    print(drift_markdown(report))
    if args.out:
        paths = write_drift_report(report, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 2 if report["overall"].get("drift") else 0


def _adapt(args: argparse.Namespace) -> int:
    import yaml

    from .lineage import comparison_markdown, readapt

    with open(args.data) as f:
        loaded = yaml.safe_load(f) or {}
    data = loaded.get("data", loaded)
    reference = None
    if args.reference:
        reference = _spec_split(args.reference, "test", args.reference_domain)
    out = args.out or f"{str(args.model).rstrip('/')}-adapted"
    train = {"epochs": args.epochs} if args.epochs else {}
    comparison = readapt(args.model, data, out, args.strategy, args.budget, args.domain, train,
                         reference, args.seed)  # fmt: skip
    print(comparison_markdown(comparison))
    print(f"new version in {out}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from .lineage import format_history, history

    print(format_history(history(args.run_dir)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    print(
        f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /health, /metadata)"
    )
    serve(args.model, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          max_payload_mb=args.max_payload_mb)  # fmt: skip
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .transfer import transfer

    config = load_run_config(args.config, args.overrides)
    if args.output_dir:
        config["output_dir"] = args.output_dir
    config.setdefault("output_dir", "runs/transfer")
    report = transfer(config)
    print(report.table())
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items()))
    print(f"report: {Path(config['output_dir']) / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="Multimodal fusion toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered encoders and fusion modules")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'audio_*'")
    p.set_defaults(func=_list)

    overrides_help = "dotted key=value overrides, e.g. fusion.name=moe train.lr=3e-4"
    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument(
        "--config", required=True, help="run config YAML (data, encoders, fusion, head, train)"
    )
    p.add_argument(
        "--output-dir", help="run folder (default: output_dir from the config, else runs/train)"
    )
    p.add_argument("--resume-from", help="a checkpoint folder, or 'latest'")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset split")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--config", required=True, help="a config with a data section")
    p.add_argument("--split", default="test")
    p.add_argument("--domain", action="append", help="evaluate on these domains only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="predict with a saved model on a dataset split or files")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--config", help="a config with a data section")
    p.add_argument("--split", default="test")
    p.add_argument("--files", nargs="+", help="images, audio, a .txt (one text a line) or a .csv")
    p.add_argument("--out", required=True, help="predictions file, .csv or .jsonl")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "robustness", help="evaluate a saved model with modalities missing at test time"
    )
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--config", required=True, help="a config with a data section")
    p.add_argument("--split", default="test")
    p.add_argument("--domain", action="append", help="evaluate on these domains only")
    p.add_argument(
        "--subsets",
        choices=["all", "one"],
        default="all",
        help="drop every subset, or one modality at a time",
    )
    p.add_argument(
        "--corruptions",
        action="store_true",
        help="also the metric against severity 0-5 for every corruption",
    )
    p.add_argument(
        "--reference",
        help="a baseline model for effective robustness (MultiBench uses late fusion)",
    )
    p.add_argument(
        "--adversarial", action="store_true", help="also accuracy under FGSM and PGD attacks"
    )
    p.add_argument(
        "--budget",
        action="append",
        type=parse_budget,
        metavar="MODALITY=RADIUS",
        help="L-inf radius per modality kind or key (default: image=4/255, audio=0.01, "
        "tabular=0.25 std, text=0.5 embedding std)",
    )
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="folder for robustness.json and corruptions.png")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_robustness)

    p = sub.add_parser("export", help="export a saved model (after its processors) to ONNX")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", help="the export folder (default MODEL/onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "drift", help="test whether incoming data drifted from the reference (exit 2 if so)"
    )
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--reference", required=True, help="dataset spec YAML (or run config)")
    p.add_argument("--incoming", required=True, help="dataset spec YAML (or run config)")
    p.add_argument("--reference-split", default="test")
    p.add_argument("--incoming-split", default="test")
    p.add_argument("--reference-domain", action="append")
    p.add_argument("--incoming-domain", action="append")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level")
    p.add_argument("--max-samples", type=int, default=400, help="rows per side, at most")
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--out", help="folder for drift.json and drift.md")
    p.set_defaults(func=_drift)

    p = sub.add_parser(
        "adapt", help="adapt a saved model to newly collected labelled data, as a new version"
    )
    p.add_argument("--model", required=True, help="the run folder to start from (the parent)")
    p.add_argument(
        "--data", required=True, help="dataset spec YAML (or run config) of the new data"
    )
    p.add_argument("--strategy", choices=["head", "top_k", "full", "lora"], default="head")
    p.add_argument("--budget", type=int, help="labelled rows per class (k-shot); default all")
    p.add_argument("--domain", action="append", help="use these domains of the new data")
    p.add_argument("--epochs", type=int)
    p.add_argument("--reference", help="spec of the data forgetting is measured on "
                   "(default: the parent's own data)")  # fmt: skip
    p.add_argument("--reference-domain", action="append")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", help="the new version's folder (default MODEL-adapted); never overwritten"
    )
    p.set_defaults(func=_adapt)

    p = sub.add_parser("history", help="the chain of versions of an adapted model")
    p.add_argument("run_dir")
    p.set_defaults(func=_history)

    p = sub.add_parser("serve", help="an HTTP inference server with dynamic batching")
    p.add_argument("--model", required=True, help="a run folder or save_pretrained folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="1 turns dynamic batching off")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-payload-mb", type=float, default=10.0)
    p.set_defaults(func=_serve)

    p = sub.add_parser("reproduce", help="re-run a finished training run and diff its metrics")
    p.add_argument("run_dir", help="a run folder written by `multimodal train`")
    p.add_argument("--output-dir", help="where the re-run goes (default RUN_DIR/reproduce)")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="largest |difference| that still passes"
    )
    p.set_defaults(func=_reproduce)

    p = sub.add_parser(
        "explain",
        help="modality contributions (drop-one, integrated gradients), MoE load, attention maps",
    )
    p.add_argument("--model", required=True, help="a save_pretrained folder or a run folder")
    p.add_argument("--config", required=True, help="a config with a data section")
    p.add_argument("--split", default="test")
    p.add_argument("--domain", action="append", help="explain these domains only")
    p.add_argument("--sample", type=int, default=0, help="row whose attention maps to draw")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--max-samples", type=int, help="explain the first N rows only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="folder for explain.json and the PNGs")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_explain)

    p = sub.add_parser(
        "ensemble",
        help="average the predictions of saved models; optionally a uniform weight soup",
    )
    p.add_argument("--models", nargs="+", required=True, help="save_pretrained or run folders")
    p.add_argument("--config", required=True, help="a config with a data section")
    p.add_argument("--split", default="test")
    p.add_argument("--domain", action="append", help="evaluate on these domains only")
    p.add_argument(
        "--soup", action="store_true", help="also average the weights (one architecture)"
    )
    p.add_argument("--save-soup", help="save the soup here (implies --soup)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_ensemble)

    p = sub.add_parser("transfer", help="run the transfer protocol and print its table")
    p.add_argument("--config", required=True, help="run config YAML with a transfer section")
    p.add_argument(
        "--output-dir", help="where the runs and report.json go (default: runs/transfer)"
    )
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_transfer)

    p = sub.add_parser(
        "export-dataset", help="write a dataset to a folder in the hub layout (parquet + README.md)"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--spec", help="a dataset spec YAML file")
    source.add_argument(
        "--path", default="synthetic", help="hub id, local folder, data file or 'synthetic'"
    )
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument(
        "option",
        nargs="*",
        default=[],
        help="built-in generator knobs, e.g. samples_per_domain=100",
    )
    p.set_defaults(func=_export_dataset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "accelerate", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"multimodal {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
