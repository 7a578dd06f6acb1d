"""`multimodal export-dataset`: a dataset written in the hub layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_overwrite, refuse_to_replace


def run_export_dataset(args: argparse.Namespace) -> int:
    from ..core.config import parse_value
    from ..data.loading import export_dataset, load_dataset
    from ..data.spec import DatasetSpec

    out = Path(args.out)
    refuse_to_replace([out / "README.md", out / "data"], args.overwrite)
    spec = DatasetSpec.from_yaml(args.spec) if args.spec else DatasetSpec(path=args.path)
    for item in args.option:
        key, _, value = item.partition("=")
        spec.options[key] = parse_value(value)
    folder = export_dataset(load_dataset(spec), out, replace=args.overwrite)
    print(f"wrote {folder} (load it back with multimodal.load_dataset({str(folder)!r}))")
    return 0


def add_export_dataset(sub: Any) -> None:

    p = sub.add_parser(
        "export-dataset", help="write a dataset to a folder in the hub layout (parquet + README.md)"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--spec", help="a dataset spec YAML file")
    source.add_argument(
        "--path", default="synthetic", help="hub id, local folder, data file or 'synthetic'"
    )
    p.add_argument("--out", required=True, help="the folder to write")
    add_overwrite(p, "README.md and data/ in --out")
    p.add_argument(
        "option",
        nargs="*",
        default=[],
        help="built-in generator knobs, e.g. samples_per_domain=100",
    )
    p.set_defaults(func=run_export_dataset)
