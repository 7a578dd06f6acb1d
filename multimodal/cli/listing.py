"""`multimodal list`: every registry, what a config or a flag can name."""

from __future__ import annotations

import argparse
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
