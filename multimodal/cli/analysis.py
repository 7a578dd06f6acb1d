"""`multimodal robustness`, `explain`, `ensemble` and `drift`: questions asked of saved models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_load_options,
    add_model,
    add_overrides,
    add_overwrite,
    add_split,
    config_split,
    count,
    fraction,
    in_domain,
    load_model,
    model_and_split,
    positive_int,
    refuse_to_replace,
    spec_split,
)


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


def run_robustness(args: argparse.Namespace) -> int:
    from ..analysis.robustness import format_missing_table, missing_modality_table
    from ..core.io import write_json_atomic

    out = Path(args.out) if args.out else None
    if out is not None:
        refuse_to_replace([out / "robustness.json", out / "corruptions.png"], args.overwrite)
    model, spec, ds = model_and_split(args)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    seen = in_domain(args, ds)
    if seen:
        print(f"in-domain: the model trained on {', '.join(seen)}")
    rows = missing_modality_table(model, ds, spec, args.batch_size, args.subsets)
    print(format_missing_table(rows))
    result: dict[str, Any] = {"in_domain": seen, "missing_modalities": rows}
    if args.corruptions:
        from ..analysis.robustness import (
            corruption_curves,
            effective_robustness,
            format_corruption_table,
            plot_corruption_curves,
        )

        curves = corruption_curves(model, ds, spec, args.batch_size)
        if args.reference:
            reference = load_model(args, args.reference)
            main = curves[0]["metric"]
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
        from ..analysis.adversarial import adversarial_table, format_adversarial_table

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


def add_robustness(sub: Any) -> None:

    p = sub.add_parser(
        "robustness", help="evaluate a saved model with modalities missing at test time"
    )
    add_model(p)
    add_split(p, "evaluate")
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
    p.add_argument("--pgd-steps", type=positive_int, default=10, help="PGD iterations")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass")
    p.add_argument("--out", help="folder for robustness.json and corruptions.png")
    add_overwrite(p, "robustness.json and corruptions.png in --out")
    add_overrides(p)
    p.set_defaults(func=run_robustness)


def run_explain(args: argparse.Namespace) -> int:
    from ..analysis.explain import (
        EXPLANATION_FILES,
        explain,
        format_explanation,
        write_explanation,
    )

    refuse_to_replace([Path(args.out) / name for name in EXPLANATION_FILES], args.overwrite)
    model, spec, ds = model_and_split(args)
    if args.max_samples and len(ds) > args.max_samples:
        ds = ds.select(range(args.max_samples))
    seen = in_domain(args, ds)
    result = explain(model, ds, spec, args.batch_size, args.ig_steps, args.sample)
    result["in_domain"] = seen
    if seen:
        print(f"in-domain: the model trained on {', '.join(seen)}")
    print(format_explanation(result))
    paths = write_explanation(result, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_explain(sub: Any) -> None:

    p = sub.add_parser(
        "explain",
        help="modality contributions (drop-one, integrated gradients), MoE load, attention maps",
    )
    add_model(p)
    p.add_argument("--config", required=True, help="a config with a data section")
    p.add_argument("--split", default="test", help="the dataset split to read")
    p.add_argument(
        "--domain", action="append", help="explain this domain only (repeat for several)"
    )
    p.add_argument("--sample", type=count, default=0, help="row whose attention maps to draw")
    p.add_argument("--ig-steps", type=positive_int, default=32, help="integrated-gradients steps")
    p.add_argument("--max-samples", type=positive_int, help="explain the first N rows only")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per forward pass")
    p.add_argument("--out", required=True, help="folder for explain.json and the PNGs")
    add_overwrite(p, "explain.json and the PNGs in --out")
    add_overrides(p)
    p.set_defaults(func=run_explain)


def run_ensemble(args: argparse.Namespace) -> int:
    from ..analysis.ensemble import evaluate_ensemble, evaluate_soup, format_ensemble_table
    from ..core.io import write_json_atomic

    refuse_to_replace([Path(p) for p in (args.out, args.save_soup) if p], args.overwrite)
    models = [load_model(args, path) for path in args.models]
    spec, ds = config_split(args)
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


def add_ensemble(sub: Any) -> None:

    p = sub.add_parser(
        "ensemble",
        help="average the predictions of saved models; optionally a uniform weight soup",
    )
    p.add_argument("--models", nargs="+", required=True, help="save_pretrained or run folders")
    add_load_options(p)
    add_split(p, "evaluate")
    p.add_argument(
        "--soup", action="store_true", help="also average the weights (one architecture)"
    )
    p.add_argument("--save-soup", help="save the soup here (implies --soup)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass")
    p.add_argument("--out", help="write the report as JSON here")
    add_overwrite(p, "the --out file and the --save-soup model")
    add_overrides(p)
    p.set_defaults(func=run_ensemble)


def run_drift(args: argparse.Namespace) -> int:
    from ..analysis.drift import DRIFT_FILES, detect_drift, drift_markdown, write_drift_report

    if args.out:
        refuse_to_replace([Path(args.out) / name for name in DRIFT_FILES], args.overwrite)
    model = load_model(args)
    ref_spec, reference = spec_split(args.reference, args.reference_split, args.reference_domain)
    inc_spec, incoming = spec_split(args.incoming, args.incoming_split, args.incoming_domain)
    report = detect_drift(model, reference, incoming, ref_spec, inc_spec, alpha=args.alpha,
                          max_samples=args.max_samples, permutations=args.permutations)  # fmt: skip
    print(drift_markdown(report))
    if args.out:
        paths = write_drift_report(report, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if report["overall"].get("drift") else 0  # 2 is for errors, as everywhere


def add_drift(sub: Any) -> None:

    p = sub.add_parser(
        "drift", help="test whether incoming data drifted from the reference (exit 1 if so)"
    )
    add_model(p)
    p.add_argument("--reference", required=True, help="dataset spec YAML (or run config)")
    p.add_argument("--incoming", required=True, help="dataset spec YAML (or run config)")
    p.add_argument("--reference-split", default="test", help="split of the reference data")
    p.add_argument("--incoming-split", default="test", help="split of the incoming data")
    p.add_argument("--reference-domain", action="append",
                   help="only this domain of the reference (repeat for several)")  # fmt: skip
    p.add_argument("--incoming-domain", action="append",
                   help="only this domain of the incoming data (repeat for several)")  # fmt: skip
    p.add_argument("--alpha", type=fraction, default=0.01, help="significance level")
    p.add_argument("--max-samples", type=positive_int, default=400, help="rows per side, at most")
    p.add_argument(
        "--permutations", type=positive_int, default=500, help="permutations of the MMD test"
    )
    p.add_argument("--out", help="folder for drift.json and drift.md")
    add_overwrite(p, "drift.json and drift.md in --out")
    p.set_defaults(func=run_drift)
