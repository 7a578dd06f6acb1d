"""The ``multimodal`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    import yaml

    from .data import DatasetSpec, export_dataset, load_dataset

    spec = DatasetSpec.from_yaml(args.spec) if args.spec else DatasetSpec(path=args.path)
    for item in args.option:
        key, _, value = item.partition("=")
        spec.options[key] = yaml.safe_load(value)
    folder = export_dataset(load_dataset(spec), args.out)
    print(f"wrote {folder} (load it back with multimodal.load_dataset({str(folder)!r}))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="Multimodal fusion toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered encoders and fusion modules")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'audio_*'")
    p.set_defaults(func=_list)
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
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
