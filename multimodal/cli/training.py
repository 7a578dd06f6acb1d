"""`multimodal train`, `reproduce`, `transfer` and `federate`: runs from a run config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.run_folder import RunFolder
from ._common import (
    add_overrides,
    add_overwrite,
    non_negative_float,
    positive_int,
    refuse_to_replace,
    weight,
)


def run_train(args: argparse.Namespace) -> int:
    from ..experiments.config import load_run_config
    from ..experiments.runs import train_run

    config = load_run_config(args.config, args.overrides)
    out = args.output_dir or config.get("output_dir") or "runs/train"
    summary = train_run(config, out, resume_from=args.resume_from, all_domains=args.all_domains,
                        overwrite=args.overwrite)  # fmt: skip
    metric = next(k for k in summary if k.startswith("validation_"))
    print(f"best {metric.replace('_', ' ')}: {summary[metric]:.4f} at step {summary['best_step']}")
    domains = ", ".join(summary["trained_domains"])
    print(
        f"test (domains {domains}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items())
    )
    if summary.get("privacy"):
        dp = summary["privacy"]
        print(f"privacy: epsilon {dp['dp_epsilon']:.3f} spent (delta {dp['dp_delta']:g}, noise "
              f"multiplier {dp['dp_noise_multiplier']:.3f}, {dp['dp_accountant']} accountant)")  # fmt: skip
    if summary["skipped_steps"]:
        print(f"skipped {summary['skipped_steps']} steps with a non-finite loss or gradient")
    print(f"wall time {summary['wall_time_s']:.1f} s; run folder {out}")
    return 0


def add_train(sub: Any) -> None:

    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument(
        "--config", required=True, help="run config YAML (data, encoders, fusion, head, train)"
    )
    p.add_argument(
        "--output-dir", help="run folder (default: output_dir from the config, else runs/train)"
    )
    p.add_argument("--resume-from", help="a checkpoint folder, or 'latest'")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the run folder (its run files are deleted first); "
        "without it, training into a folder that holds a run is refused",
    )
    p.add_argument(
        "--all-domains",
        action="store_true",
        help="train on every domain; by default a config with a transfer section trains on its "
        "source domains only (transfer.source, else the first domain)",
    )
    add_overrides(p)
    p.set_defaults(func=run_train)


def run_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.runs import format_diff, reproduce

    result = reproduce(args.run_dir, args.output_dir)
    print(format_diff(result))
    ok = result["max_abs_diff"] <= args.tolerance
    print(("reproduced" if ok else "NOT reproduced") + f" (tolerance {args.tolerance:g}); "
          f"wrote {Path(result['output_dir']) / 'reproduction.json'}")  # fmt: skip
    return 0 if ok else 1


def add_reproduce(sub: Any) -> None:

    p = sub.add_parser("reproduce", help="re-run a finished training run and diff its metrics")
    p.add_argument("run_dir", help="a run folder written by `multimodal train`")
    p.add_argument("--output-dir", help="where the re-run goes (default RUN_DIR/reproduce)")
    p.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=0.0,
        help="largest |difference| that still passes",
    )
    p.set_defaults(func=run_reproduce)


def run_transfer(args: argparse.Namespace) -> int:
    from ..experiments.config import load_run_config
    from ..experiments.transfer import transfer
    from ..experiments.transfer.plan import earlier_outputs

    config = load_run_config(args.config, args.overrides)
    out = transfer_output_dir(config, args.output_dir)
    config["output_dir"] = str(out)
    if not (config.get("train") or {}).get("resume_from"):
        refuse_to_replace(earlier_outputs(out), args.overwrite)
    if args.overwrite:  # every stage's run folder replaced, not refused
        config.setdefault("train", {})["overwrite"] = True
    report = transfer(config, reuse_scratch=not args.retrain_scratch)
    print(report.table())
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items()))
    print(f"report: {Path(config['output_dir']) / 'report.json'}")
    return 0


# Other commands' outputs: a transfer never writes beside them unasked.
OTHER_OUTPUTS = (RunFolder.run_config, RunFolder.results, RunFolder.best_model)


def transfer_output_dir(config: dict[str, Any], given: str | None) -> Path:
    """Where ``transfer`` writes: ``given``, else the config's ``output_dir`` (where
    ``mm.transfer`` writes too), else ``runs/transfer``. A folder that holds a training
    run's files is warned about: the transfer's files go beside them, none replaced."""
    import sys

    out = Path(given or config.get("output_dir") or "runs/transfer")
    mixed = [name for name in OTHER_OUTPUTS if (out / name).exists()]
    if mixed:
        print(f"warning: {out} already holds {', '.join(mixed)} from another command; the "
              "transfer's report.json, source/, adapt-*/ and scratch-*/ go beside them", file=sys.stderr)  # fmt: skip
    return out


def add_transfer(sub: Any) -> None:

    p = sub.add_parser("transfer", help="run the transfer protocol and print its table")
    p.add_argument("--config", required=True, help="run config YAML with a transfer section")
    p.add_argument(
        "--output-dir",
        help="where the runs and report.json go (default: the config's output_dir, as for "
        "mm.transfer, else runs/transfer)",
    )
    add_overwrite(p, "the report and stage runs (source/, adapt-*/, scratch-*/)")
    p.add_argument("--retrain-scratch", action="store_true",
                   help="train the scratch baselines again even where an earlier transfer with the "
                   "same inputs stored their scores (TRANSFERFUSE_CACHE, default ~/.cache/transferfuse)")  # fmt: skip
    add_overrides(p)
    p.set_defaults(func=run_transfer)


def run_federate(args: argparse.Namespace) -> int:
    from ..experiments.config import load_run_config
    from ..experiments.federated import federate

    overrides = list(args.overrides)
    if args.strategy is not None:
        print("--strategy is deprecated for federate: the flag is now --algorithm (--strategy "
              "elsewhere names what trains)", file=sys.stderr)  # fmt: skip
    algorithm = args.algorithm or args.strategy
    for key, value in (
        ("strategy", algorithm),
        ("rounds", args.rounds),
        ("ray_address", args.ray_address),
    ):
        if value is not None:
            overrides.append(f"federate.{key}={value}")
    out = Path(args.output_dir or "runs/federate")
    refuse_to_replace([out / "model", out / "federated.json"], args.overwrite)
    config = load_run_config(args.config, overrides)
    result = federate(config, out)
    for c in result["clients"]:
        extra = "".join(f", {k} {c[k]:.4f}" for k in ("personalised", "dp_epsilon") if k in c)
        print(f"client {'+'.join(c['domains'])} ({c['rows']} rows): test {c['test']:.4f}{extra}")
    held = result["held_out"]
    for h in held.get("per_client") or [held]:
        print(f"held out {'+'.join(h['domains'])}: zero-shot {h['zero_shot']:.4f}, "
              f"adapted {h['adapted']:.4f} (mean of {len(h['episodes'])} episodes)")  # fmt: skip
    print(f"{result['strategy']}: {result['seconds']:.1f} s; {out / 'federated.json'}")
    return 0


def add_federate(sub: Any) -> None:
    p = sub.add_parser(
        "federate",
        help="train across domain clients on Flower (fedavg, fedprox, fedbn) or a centralised "
        "reference (pooled, local), then evaluate each client and the held-out domain",
    )
    p.add_argument("--config", required=True, help="run config YAML (its federate section)")
    p.add_argument(
        "--output-dir", help="where federated.json and model/ go (default: runs/federate)"
    )
    algorithms = ("fedavg", "fedprox", "fedbn", "pooled", "local")
    p.add_argument("--algorithm", choices=algorithms,
                   help="how clients train together: fedavg, fedprox (a proximal term), fedbn "
                   "(BatchNorm stays local), or the references pooled (one model on every "
                   "client's rows) and local (each client alone); default: federate.strategy")  # fmt: skip
    p.add_argument("--strategy", choices=algorithms, help="deprecated: --algorithm")
    p.add_argument("--rounds", type=positive_int,
                   help="federated rounds (default: federate.rounds of the config)")  # fmt: skip
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one here")
    add_overwrite(p, "model/ and federated.json in --output-dir")
    add_overrides(p)
    p.set_defaults(func=run_federate)


def run_distill(args: argparse.Namespace) -> int:
    from ..core.io import write_json_atomic
    from ..data.loading import load_dataset, select_domains
    from ..experiments.config import RunConfig, load_run_config
    from ..experiments.distill import distill, per_domain
    from ..experiments.runs import training_domains
    from ..experiments.transfer.plan import fitting_rows
    from ..modeling.freezing import count_parameters
    from ..modeling.model import MultimodalModel, build_model

    out = Path(args.output_dir or "runs/distill")
    refuse_to_replace([RunFolder(out).best_model, out / "distill.json"], args.overwrite)
    run = RunConfig.from_dict(load_run_config(args.student_config, args.overrides))
    dsd = load_dataset(run.data)
    sources = training_domains(run, dsd["train"], all_domains=False)
    splits = {k: select_domains(v, sources) if sources else v for k, v in dsd.items()}
    unlabelled = (
        select_domains(dsd["train"], args.unlabelled_domains) if args.unlabelled_domains else None
    )
    teachers = [
        MultimodalModel.from_pretrained(t, trust_remote_code=args.trust_remote_code)
        for t in args.teacher
    ]
    student = build_model(
        run.model.to_dict(), fitting_rows(splits["train"], run.data), seed=int(run.seed or 0)
    )
    result = distill(teachers, student, run.data, splits["train"], run.stage(progress=False),
                     args.temperature, args.alpha, unlabelled, splits.get("validation"))  # fmt: skip
    student.save_pretrained(RunFolder(out).best_model)
    models = {"student": student, **{f"teacher{i}": t for i, t in enumerate(teachers)}}
    report = {"steps": result.steps, "temperature": args.temperature, "alpha": args.alpha,
              "parameters": {k: count_parameters(m)["total"] for k, m in models.items()},
              "test": per_domain(models, dsd["test"], run.data)}  # fmt: skip
    write_json_atomic(out / "distill.json", report)
    metric = student.head.task.default_metric
    for domain, entry in report["test"].items():
        print(f"{domain}: " + ", ".join(f"{k} {v[metric]:.4f}" for k, v in entry.items()))
    print(
        "parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in report["parameters"].items())
        + f"; {out}"
    )
    return 0


def add_distill(sub: Any) -> None:
    p = sub.add_parser("distill", help="train a small student on a teacher's (or an ensemble's) "
                       "class probabilities over labelled and unlabelled rows")  # fmt: skip
    p.add_argument("--teacher", action="append", required=True,
                   help="a saved teacher model (repeat for an ensemble: its mean probabilities)")  # fmt: skip
    p.add_argument("--student-config", required=True,
                   help="run config of the student (encoders, fusion, head, train) and of the data")  # fmt: skip
    p.add_argument(
        "--temperature",
        type=non_negative_float,
        default=2.0,
        help="the teacher's softmax temperature (0: hard labels)",
    )
    p.add_argument(
        "--alpha",
        type=weight,
        default=0.5,
        help="weight of the teacher's probabilities against true labels",
    )
    p.add_argument(
        "--unlabelled-domains",
        nargs="+",
        help="also distil on these domains' training rows, labels unused",
    )
    p.add_argument(
        "--output-dir", help="where best_model/ and distill.json go (default: runs/distill)"
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="let the teachers' encoders run hub code"
    )
    add_overwrite(p, "best_model/ and distill.json in --output-dir")
    add_overrides(p)
    p.set_defaults(func=run_distill)
