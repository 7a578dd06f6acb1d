"""`multimodal list`: every registry, what a config or a flag can name."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def _registries() -> dict[str, tuple[str, Callable[[str], list[str]]]]:
    """kind -> (the config key or flag that takes its names, its names matching a pattern).
    Imports happen here, not for ``--help``."""
    import fnmatch

    import encoders
    import fusion

    from ..experiments.adaptations import ADAPTATIONS
    from ..experiments.federated import CENTRALISED, STRATEGIES
    from ..modeling.balance import BALANCERS
    from ..modeling.dg import list_dg_objectives
    from ..modeling.freezing import FREEZERS
    from ..modeling.regularize import REGULARIZERS
    from ..modeling.tasks import TASKS
    from ..modeling.uda import list_uda_objectives

    def names(values: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
        return lambda pattern: sorted(v for v in values if fnmatch.fnmatch(v, pattern))

    return {
        "encoders": ("encoders.<modality>.name", encoders.list_encoders),
        "fusions": ("fusion.name", fusion.list_fusions),
        "adaptations": ("transfer.adaptation, bench --adaptation", ADAPTATIONS.list),
        "tasks": ("head.task", TASKS.list),
        "uda": ("train.uda", names(list_uda_objectives())),
        "regularizers": ("train.regularize", names([r for r in REGULARIZERS if r != "none"])),
        "dg": ("train.dg", list_dg_objectives),
        "balancers": ("train.balance", BALANCERS.list),
        "strategies": ("train.strategy (what trains)", FREEZERS.list),
        "federated": ("federate --algorithm", names([*STRATEGIES, *CENTRALISED])),
    }


KINDS = ("encoders", "fusions", "adaptations", "tasks", "uda", "regularizers", "dg", "balancers",
         "strategies", "federated")  # fmt: skip


def run_list(args: argparse.Namespace) -> int:
    registries = _registries()
    for kind in args.kind or KINDS:
        key, names = registries[kind]
        found = names(args.pattern)
        if found or args.kind:
            print(f"{kind} ({key}):")
            for name in found:
                print(f"  {name}")
    return 0


def add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list what is registered: encoders, fusions, adaptations, "
                       "tasks, UDA objectives, regularizers, domain-generalisation objectives, balancers, "
                       "strategies, federated algorithms")  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'audio_*'")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="only these registries (repeat for several)")  # fmt: skip
    p.set_defaults(func=run_list)


def run_cache(args: argparse.Namespace) -> int:
    from ..experiments.transfer import stored

    found = stored.entries(args.kind or stored.KINDS)
    chosen = stored.older_than(found, args.older_than)
    unused = "" if args.older_than is None else f" unused for more than {args.older_than:g} days"
    if args.clear:
        count, size = stored.prune(chosen)
        print(f"removed {count} entries{unused} ({_megabytes(size)}) from {stored.root()}; "
              f"{len(found) - count} kept")  # fmt: skip
        return 0
    print(f"{stored.root()} (TRANSFERFUSE_CACHE):")
    for kind in args.kind or stored.KINDS:
        mine = [e for e in found if e.kind == kind]
        line = f"  {kind}: {len(mine)} entries, {_megabytes(sum(e.size for e in mine))}"
        if mine:
            days = [(time.time() - e.used) / 86400 for e in mine]
            line += f", last used {min(days):.1f}-{max(days):.1f} days ago"
        print(line)
    if chosen and args.older_than is not None:
        print(f"{len(chosen)} entries{unused} ({_megabytes(sum(e.size for e in chosen))}): "
              f"--clear --older-than {args.older_than:g} removes them")  # fmt: skip
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def add_cache(sub: Any) -> None:
    from ._common import non_negative_float

    p = sub.add_parser("cache", help="list, or clear, the trained source models and scratch "
                       "scores kept across commands (TRANSFERFUSE_CACHE)")  # fmt: skip
    p.add_argument("--clear", action="store_true",
                   help="remove the entries (with --older-than, only those unused that long)")  # fmt: skip
    p.add_argument("--older-than", type=non_negative_float, metavar="DAYS",
                   help="only entries not written or read for more than DAYS days")  # fmt: skip
    p.add_argument("--kind", action="append", choices=("source", "scratch"),
                   help="only this store (repeat for both)")  # fmt: skip
    p.set_defaults(func=run_cache)
