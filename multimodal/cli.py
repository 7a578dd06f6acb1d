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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="Multimodal fusion toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered encoders and fusion modules")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'audio_*'")
    p.set_defaults(func=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
