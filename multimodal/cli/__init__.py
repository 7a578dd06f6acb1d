"""The ``multimodal`` command line. Each command lives in the module of its kind and adds
its own parser; heavy imports happen inside the command, so ``--help`` stays quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import analysis, bench, dataset, deploy, evaluation, listing, rank, training, versions
from ._common import Parser
from .errors import user_error
from .noise import quiet_third_parties

# The order of ``multimodal --help``.
COMMANDS = (
    listing.add_list, training.add_train, evaluation.add_evaluate, evaluation.add_calibrate,
    evaluation.add_predict,
    analysis.add_robustness, deploy.add_export, deploy.add_push, analysis.add_drift, versions.add_readapt,
    versions.add_history, deploy.add_serve, training.add_reproduce, analysis.add_explain,
    analysis.add_ensemble, training.add_transfer, training.add_federate, training.add_distill, bench.add_bench, rank.add_rank, listing.add_cache, dataset.add_export_dataset,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="Multimodal fusion toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():  # aliases share one
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of an error, not one line")  # fmt: skip
        command.add_argument("--verbose", action="store_true",
                             help="keep the libraries' own progress bars, logs and warnings")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_parties(verbose="--verbose" in argv, command=next(iter(argv), None))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option (argparse takes a positional list once)
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except Exception as err:
        message = user_error(err)
        if message is None or args.debug:
            raise  # a bug, or asked for: the whole traceback
        prog = getattr(args, "invoked_as", None) or f"multimodal {args.command}"
        print(f"{prog}: error: {message} (--debug shows where)", file=sys.stderr)
        return 2


def console(argv: Sequence[str] | None = None) -> int:
    """The ``multimodal`` command: ``main``, then an exit without the interpreter's last
    garbage collection over every object a benchmark or a ranking built (about a second;
    the process frees them anyway, and every file written is closed by then)."""
    import gc

    code = main(argv)
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
