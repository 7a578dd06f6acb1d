"""What several commands share: argument groups and the loaders of a config's split."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

OVERRIDES_HELP = "dotted key=value overrides, e.g. fusion.name=moe train.lr=3e-4"


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that states each option's default from the parser itself, so it cannot drift
    from the code; an option whose default is computed says how in its own help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The commands' parser: ``DefaultsHelpFormatter`` unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} that an earlier run left (without it, the command "
                        "stops before it starts)")  # fmt: skip


def refuse_to_replace(paths: Iterable[Path], overwrite: bool) -> None:
    """Stop before any work when a path the command writes already holds something (a file,
    or a folder that is not empty): what a user has is replaced only with --overwrite."""
    taken = [p for p in paths if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    if not taken or overwrite:
        return
    if len(taken) == 1:
        what = f"{taken[0]} already exists"
    elif len({p.parent for p in taken}) == 1:
        what = f"{taken[0].parent} already holds {', '.join(p.name for p in taken)}"
    else:
        what = f"{', '.join(map(str, taken))} already exist"
    it = "it" if len(taken) == 1 else "them"
    raise FileExistsError(f"{what}; write elsewhere, or pass --overwrite to replace {it}")


def config_split(args: argparse.Namespace) -> tuple[Any, Any]:
    """The spec and the --split (optionally --domain) of --config's data, with overrides."""
    from ..data.loading import load_dataset, select_domains, split_of
    from ..experiments.config import RunConfig, load_run_config

    spec = RunConfig.from_dict(load_run_config(args.config, args.overrides)).data
    ds = split_of(load_dataset(spec), args.split)
    if getattr(args, "domain", None):
        ds = select_domains(ds, args.domain)
    return spec, ds


def model_and_split(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The saved model of --model and the --split (optionally --domain) of --config's data."""
    model = load_model(args)
    spec, ds = config_split(args)
    warn_absent_modalities(model, spec)
    return model, spec, ds


def warn_absent_modalities(model: Any, spec: Any) -> list[str]:
    """The model's modalities that the data maps no column to, warned about on stderr: every
    row then takes the missing-modality path for them."""
    import sys

    absent = sorted(set(model.modalities) - set(spec.column_of()))
    if absent:
        print(f"warning: the model reads {absent}, but the data maps no column to "
              f"{'it' if len(absent) == 1 else 'them'} (data.columns: "
              f"{sorted(spec.column_of())}): every row is scored with "
              f"{', '.join(absent)} missing", file=sys.stderr)  # fmt: skip
    return absent


def spec_section(path: str) -> dict[str, Any]:
    """The dataset spec in a spec YAML, or the data section of a run config."""
    from ..core.config import read_yaml

    loaded = read_yaml(path)
    return loaded.get("data", loaded)


def spec_split(path: str, split: str, domains: Sequence[str] | None) -> tuple[Any, Any]:
    """(DatasetSpec, the split) of a dataset spec YAML or a run config's data section."""
    from ..data.loading import load_dataset, select_domains, split_of
    from ..data.spec import DatasetSpec

    spec = DatasetSpec.from_dict(spec_section(path))
    ds = split_of(load_dataset(spec), split)
    return spec, select_domains(ds, list(domains)) if domains else ds


def in_domain(args: argparse.Namespace, ds: Any) -> list[str]:
    """The evaluated domains that --model trained on (as its run folder records them),
    warned about on stderr: numbers on them are in-domain, not transfer."""
    import sys

    from ..data.split import Split
    from ..experiments.runs import trained_domains

    trained = trained_domains(args.model)
    if not trained:
        return []
    evaluated = args.domain or Split(ds).domains()
    seen = sorted(set(evaluated) & set(trained))
    if seen:
        print(f"warning: in-domain evaluation of {', '.join(seen)}: the model trained on "
              f"{', '.join(trained)}, so the numbers there are not transfer (rows evaluated from "
              f"{', '.join(sorted(evaluated))})", file=sys.stderr)  # fmt: skip
    return seen


MODEL_HELP = "a save_pretrained folder or a run folder"


def add_model(parser: argparse.ArgumentParser, help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", required=True, help=help)
    add_load_options(parser)


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """What only the user can allow when a saved model is loaded."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let encoders run code from the hub; a model folder cannot ask for it",
    )
    parser.add_argument("--allow-unverified", action="store_true",
                        help="load a model folder that has no checksums.json, with a warning")  # fmt: skip


def load_model(args: argparse.Namespace, path: str | None = None) -> Any:
    """The saved model at ``path`` (default --model), loaded as --trust-remote-code and
    --allow-unverified say."""
    from ..modeling.model import MultimodalModel

    return MultimodalModel.from_pretrained(
        path or args.model,
        trust_remote_code=getattr(args, "trust_remote_code", False),
        allow_unverified=getattr(args, "allow_unverified", False),
    )


def add_split(parser: argparse.ArgumentParser, verb: str | None = "evaluate",
              required: bool = True) -> None:  # fmt: skip
    """--config (whose data section names the dataset), --split and, with ``verb``, --domain."""
    parser.add_argument("--config", required=required, help="a config with a data section")
    parser.add_argument("--split", default="test", help="the dataset split to read")
    if verb:
        parser.add_argument("--domain", action="append",
                            help=f"{verb} on this domain only (repeat for several)")  # fmt: skip


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _number(kind: type, least: float, strict: bool) -> Any:
    """An argparse type: a ``kind`` above ``least`` (strict) or at least ``least``; its
    error names the bound, and argparse names the flag."""
    bound = f"more than {least:g}" if strict else f"at least {least:g}"

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
        if number < least or (strict and number == least) or number != number:
            raise argparse.ArgumentTypeError(f"expected {bound}, got {value}")
        return number

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


positive_int = _number(int, 1, strict=False)
count = _number(int, 0, strict=False)  # zero allowed: a row index, retries
positive_float = _number(float, 0, strict=True)
non_negative_float = _number(float, 0, strict=False)


def fraction(value: str) -> float:
    """A probability strictly between 0 and 1 (a significance level)."""
    number = positive_float(value)
    if number >= 1:
        raise argparse.ArgumentTypeError(f"expected a value below 1, got {value}")
    return number


def weight(value: str) -> float:
    """A mixing weight from 0 to 1, both ends included."""
    number = non_negative_float(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"expected a value from 0 to 1, got {value}")
    return number
