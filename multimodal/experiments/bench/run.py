"""Running a suite's plan: each unit not already stored runs (here or on Ray), is stored as
``out/runs/<hash>.json`` and is logged to the trackers; the rows of every unit come back."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...core.config import config_hash
from ...core.io import write_json_atomic
from ..distributed import Executor, SequentialExecutor
from .plan import Suite, Unit, plan, unit_config
from .store import result_rows, robustness_rows

logger = logging.getLogger(__name__)


def run_unit_reports(config: dict[str, Any], adaptations: list[str]) -> dict[str, Any]:
    """One unit: the transfer protocol with each adaptation, as report dicts."""
    from ..transfer import transfer_adaptations

    return {s: r.to_dict() for s, r in transfer_adaptations(config, adaptations).items()}


def run_seed_group(configs: list[dict[str, Any]], adaptations: list[str]) -> list[dict[str, Any]]:
    """Units that differ only in their seed, their fits batched across seeds
    (``transfer_seeds``): each one's report dicts, as ``run_unit_reports`` gives them."""
    from ..transfer import transfer_seeds

    reports = transfer_seeds(configs, adaptations)
    return [{s: r.to_dict() for s, r in unit.items()} for unit in reports]


def _seed_groups(todo: list[tuple[int, dict[str, Any], Path, dict[str, Any]]],
                 adaptations: Sequence[str]) -> list[list[int]]:  # fmt: skip
    """Positions in ``todo`` grouped by everything but the seed: the config without it and
    the adaptations still needed."""
    groups: dict[str, list[int]] = defaultdict(list)
    for position, (_, config, _, earlier) in enumerate(todo):
        rest = {k: v for k, v in config.items() if k != "seed"}
        needed = [a for a in adaptations if a not in earlier]
        groups[json.dumps([rest, needed], sort_keys=True, default=str)].append(position)
    return list(groups.values())


def run_benchmark(
    suite: Suite,
    out: str | Path,
    fusions: Sequence[str] | None = None,
    adaptations: Sequence[str] | None = None,
    seeds: int | None = None,
    progress: bool = True,
    run_unit: Callable[[dict[str, Any], list[str]], dict[str, Any]] | None = None,
    robustness: list[dict[str, Any]] | None = None,
    executor: Executor | None = None,
    trackers: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Run every unit not already in ``out/runs`` and return the rows of all planned units.

    With ``robustness`` (a list), each unit's missing-modality rows are appended to it; the
    suite's base config needs ``transfer.robustness: true`` for the reports to hold them.
    ``executor`` decides where units run (default: one after another in this process, the
    seeds of each grid point batched together, ``run_seed_group``; ``RayExecutor`` spreads
    the units over Ray workers); rows come back in plan order either way.
    ``trackers`` (accelerate tracker names) get one run per finished unit.

    A unit is stored as ``out/runs/<hash>.json`` once it finishes, so an interrupted
    benchmark resumes where it stopped and a finished one only rewrites its summary; a
    unit that other code of the toolkit stored (another ``code_fingerprint``) runs again.
    """

    from ...core.provenance import environment

    out = Path(out)
    adaptations = list(adaptations or suite.adaptations)
    units = plan(suite, list(fusions or suite.fusions), seeds or suite.seeds)
    executor = executor or SequentialExecutor()
    machine = environment()
    stored: dict[int, Mapping[str, Any]] = {}
    todo: list[tuple[int, dict[str, Any], Path, dict[str, Any]]] = []
    # Units whose configs coincide (a one-modality baseline under every balancing method)
    # run once and share the stored result.
    same: dict[Path, list[int]] = defaultdict(list)
    other_code = 0
    for index, unit in enumerate(units):
        config = unit_config(suite, unit)
        path = out / "runs" / f"{config_hash(config)}.json"
        same[path].append(index)
        if len(same[path]) > 1:
            continue
        done = json.loads(path.read_text()) if path.is_file() else None
        # A run that other code of the toolkit stored is not this code's number.
        if done is not None and _code_of(done) != machine["code_fingerprint"]:
            other_code, done = other_code + 1, None
        if done is not None and set(adaptations) <= set(done["reports"]):
            stored[index] = done["reports"]
        else:
            todo.append((index, config, path, done["reports"] if done else {}))
    if other_code:
        logger.warning("%d stored runs in %s came from other code of the toolkit; running them "
                       "again", other_code, out)  # fmt: skip
    if stored:
        logger.info("%d of %d runs already in %s; skipping them", len(stored), len(units), out)
    status = Status(out / "status.json", suite.name, len(todo), len(stored))
    try:
        _run_todo(todo, units, adaptations, executor, run_unit, stored, out, suite.name, trackers,
                  progress, machine, status)  # fmt: skip
    except BaseException as err:
        status.end("failed", f"{type(err).__name__}: {err}")
        raise
    status.end("finished")
    for indices in same.values():
        for index in indices[1:]:
            stored[index] = stored[indices[0]]
    rows: list[dict[str, Any]] = []
    for index, unit in enumerate(units):
        reports = {s: stored[index][s] for s in adaptations}
        rows += [r.to_dict() for r in result_rows(suite.name, unit, reports)]
        if robustness is not None:
            robustness += robustness_rows(unit, reports)
    return rows


def _code_of(run: Mapping[str, Any]) -> str | None:
    """The hash of the toolkit's source files a stored run was computed with (None: a run
    stored before runs recorded it)."""
    return (run.get("environment") or {}).get("code_fingerprint")


def _run_todo(
    todo: list[tuple[int, dict[str, Any], Path, dict[str, Any]]], units: list[Unit],
    adaptations: list[str], executor: Executor, run_unit: Any, stored: dict[int, Any],
    out: Path, name: str, trackers: Sequence[str], progress: bool, machine: dict[str, Any],
    status: Status | None = None,
) -> None:  # fmt: skip
    """Run the units not yet stored and store each as it finishes (``stored`` by unit index)."""
    from tqdm.auto import tqdm

    # In this process a grid point's seeds run as one batched group; elsewhere (Ray) or
    # with a given run_unit, one unit per job.
    if run_unit is None and isinstance(executor, SequentialExecutor):
        groups, run = _seed_groups(todo, adaptations), run_seed_group
    else:
        groups = [[position] for position in range(len(todo))]
        one = run_unit or run_unit_reports

        def run(configs: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
            return [one(config, arms) for config in configs]

    jobs = [([todo[p][1] for p in group], [a for a in adaptations if a not in todo[group[0]][3]])
            for group in groups]  # fmt: skip
    bar = tqdm(total=len(todo), desc=name, unit="run", disable=not progress)
    try:
        for job, results in executor.map(run, jobs):
            for position, new in zip(groups[job], results, strict=True):
                index, config, path, earlier = todo[position]
                # Keep the adaptations of earlier invocations: the shared stages are seeded, so
                # the unit's source model and scratch baseline are the same ones.
                reports = {**earlier, **new}
                write_json_atomic(path, {"unit": units[index].__dict__, "config": config,
                                         "reports": reports, "environment": machine})  # fmt: skip
                stored[index] = reports
                if trackers:
                    log_unit(trackers, name, units[index], config, reports, out, path.stem)
                bar.set_postfix(fusion=units[index].fusion, seed=units[index].seed)
                bar.update()
                if status is not None:
                    status.unit_done(bar.format_dict)
    finally:
        bar.close()
        executor.close()


class Status:
    """``out/status.json``, written when the benchmark starts, after each unit and at its
    end: what it is doing, how far it is and its ETA, for a run that prints nothing."""

    def __init__(self, path: Path, suite: str, todo: int, stored: int) -> None:
        import os
        import time

        self.path, self.started = path, time.time()
        self.state: dict[str, Any] = {
            "suite": suite, "state": "running", "pid": os.getpid(), "units": todo + stored,
            "stored_before": stored, "todo": todo, "done": 0, "started_at": _iso(self.started),
        }  # fmt: skip
        self._write()

    def unit_done(self, bar: Mapping[str, Any]) -> None:
        import time

        done = int(bar.get("n") or self.state["done"] + 1)
        elapsed = time.time() - self.started
        left = (self.state["todo"] - done) * elapsed / max(done, 1)
        self.state.update(done=done, elapsed_s=round(elapsed, 1), eta_s=round(left, 1))
        self._write()

    def end(self, state: str, error: str | None = None) -> None:
        import time

        self.state.update(state=state, ended_at=_iso(time.time()), eta_s=0.0)
        if error:
            self.state["error"] = error.splitlines()[0][:500] if error else None
        self._write()

    def _write(self) -> None:
        import time

        self.state["updated_at"] = _iso(time.time())
        write_json_atomic(self.path, self.state)


def _iso(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def log_unit(trackers: Sequence[str], project: str, unit: Unit, config: Mapping[str, Any],
             reports: Mapping[str, Mapping[str, Any]], out: Path, key: str) -> None:  # fmt: skip
    """One tracker run per unit: its config, and per adaptation the source metric and
    each target's zero-shot, adapted, scratch, gain and forgetting."""
    from ...engine.trackers import Trackers

    name = f"{unit.fusion}-seed{unit.seed}-{key[:8]}"
    run = Trackers(trackers, project, name, out / "logs").start({"unit": unit.__dict__, **config})
    values: dict[str, float] = {}
    for adaptation, report in reports.items():
        values[f"{adaptation}/source"] = report["source"]
        for target, result in report["targets"].items():
            for m in ("zero_shot", "adapted", "scratch", "transfer_gain", "forgetting"):
                values[f"{adaptation}/{target}/{m}"] = result[m]
    run.log(values, step=0)
    run.finish()
