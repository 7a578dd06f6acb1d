"""`multimodal list`: the registered encoders and fusion modules."""

from __future__ import annotations

import argparse
from typing import Any


def run_list(args: argparse.Namespace) -> int:
    import encoders
    import fusion

    print("encoders:")
    for name in encoders.list_encoders(args.pattern):
        print(f"  {name}")
    print("fusions:")
    for name in fusion.list_fusions(args.pattern):
        print(f"  {name}")
    return 0


def add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list the registered encoders and fusion modules")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'audio_*'")
    p.set_defaults(func=run_list)
