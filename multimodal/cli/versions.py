"""`multimodal readapt` and `history`: re-adaptation as versions of a model."""

from __future__ import annotations

import argparse
from typing import Any

from ..modeling.freezing import STRATEGIES
from ._common import add_model, count, positive_int, spec_section, spec_split


def run_readapt(args: argparse.Namespace) -> int:
    import sys

    from ..experiments.lineage import comparison_markdown, parent_reference, readapt

    if args.command == "adapt":
        print("multimodal adapt is deprecated: the command is now `multimodal readapt` "
              "(\"adapt\" names the transfer stage)", file=sys.stderr)  # fmt: skip

    data = spec_section(args.data)
    reference = None
    if args.reference:
        reference = spec_split(args.reference, "test", args.reference_domain)
    elif args.reference_domain:
        reference = parent_reference(args.model, args.reference_domain)
        if reference is None:
            raise ValueError(f"--reference-domain: {args.model} records no data of its own "
                             "(no lineage.json or run_config.json); name it with --reference")  # fmt: skip
    out = args.out or f"{str(args.model).rstrip('/')}-adapted"
    train = {"epochs": args.epochs} if args.epochs else {}
    comparison = readapt(args.model, data, out, args.strategy, args.budget, args.domain, train,
                         reference, args.seed, args.rehearsal, args.tta)  # fmt: skip
    print(comparison_markdown(comparison))
    print(f"new version in {out}")
    return 0


def add_readapt(sub: Any) -> None:
    p = sub.add_parser(
        "readapt", aliases=["adapt"],
        help="adapt a saved model to newly collected labelled data, as a new version "
        "(`adapt` is its deprecated old name)",
    )  # fmt: skip
    add_model(p, "the run folder to start from (the parent)")
    p.add_argument(
        "--data", required=True, help="dataset spec YAML (or run config) of the new data"
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="head",
        help="what is trained on the new data",
    )
    p.add_argument(
        "--budget", type=positive_int, help="labelled rows per class (k-shot); default all"
    )
    p.add_argument(
        "--rehearsal",
        type=count,
        default=0,
        help="mix this many of the parent's training rows (a seeded sample) into the new data",
    )
    p.add_argument("--tta", choices=["tent", "bn_adapt"],
                   help="adapt without labels on the new data's train split (after drift flags a shift)")  # fmt: skip
    p.add_argument(
        "--domain", action="append", help="use this domain of the new data (repeat for several)"
    )
    p.add_argument("--epochs", type=positive_int,
                   help="training epochs on the new data (default: the parent's train.epochs)")  # fmt: skip
    p.add_argument("--reference", help="spec of the data forgetting is measured on "
                   "(default: the parent's own data, the domains it trained on)")  # fmt: skip
    p.add_argument("--reference-domain", action="append",
                   help="measure forgetting on these domains of the reference only (repeat for several)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the k-shot draw, the rehearsal sample and training")  # fmt: skip
    p.add_argument(
        "--out", help="the new version's folder (default MODEL-adapted); never overwritten"
    )
    p.set_defaults(func=run_readapt)


def run_history(args: argparse.Namespace) -> int:
    from ..experiments.lineage import format_history, history

    print(format_history(history(args.run_dir)))
    return 0


def add_history(sub: Any) -> None:

    p = sub.add_parser("history", help="the chain of versions of an adapted model")
    p.add_argument("run_dir", help="a version's folder, written by `multimodal readapt` or `train`")
    p.set_defaults(func=run_history)
