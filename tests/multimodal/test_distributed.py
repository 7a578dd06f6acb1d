"""The benchmark grid on Ray: the same per-run JSON as in-process, retries of dead workers,
one tracker run per unit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from multimodal.experiments.bench import Suite, run_benchmark
from multimodal.experiments.distributed import RayExecutor
from tests.multimodal.tiny_run import tiny_run

# Each trains for tens of seconds (Ray workers, calibration probes, the GPU script).
pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the distributed extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module; executors join it and leave it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _tiny_suite() -> Suite:
    return Suite(name="tiny", base=tiny_run(), fusions=["concat"], adaptations=["head"], seeds=2,
                 pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[3], unimodal=False)  # fmt: skip


def _stored(folder: Path) -> dict[str, dict]:
    """Per-run JSON by file name, without what depends on the clock, on the units a process
    ran before (the feature store's hit counts) or beside (how its fits were batched)."""
    runs = {}
    for path in sorted((folder / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        for report in record["reports"].values():
            report.pop("stage_seconds")
            report.pop("feature_store")
            report.pop("source_fit")  # the source training's throughput
            report.pop("episode_fits")  # how the fits ran: alone, or with the other seeds
        record.pop("environment")
        runs[path.name] = record
    return runs


def _stub_unit(config: dict, adaptations: list[str]) -> dict:
    name = f"{config['fusion']['name']}-{config['seed']}"
    report = {"source_domains": ["d0"], "metric": "accuracy", "source": 0.9, "config_hash": name,
              "stage_seconds": {"all": 1.0}, "targets": {"d1": {"zero_shot": 0.4, "adapted": 0.6,
              "scratch": 0.5, "transfer_gain": 0.1, "forgetting": 0.0, "adapt_samples": 8}}}  # fmt: skip
    return {s: report for s in adaptations}


def test_ray_starts_only_when_a_unit_is_left_to_run(tmp_path) -> None:
    assert not ray.is_initialized()  # this test runs before the module's shared instance
    suite = _tiny_suite()
    first = run_benchmark(suite, tmp_path, run_unit=_stub_unit, progress=False)
    again = run_benchmark(suite, tmp_path, run_unit=_stub_unit, progress=False,
                          executor=RayExecutor(workers=2))  # fmt: skip
    assert again == first
    assert not ray.is_initialized(), "every unit was stored: nothing to start Ray for"


def test_ray_workers_write_the_per_run_json_of_a_sequential_run(tmp_path, local_ray) -> None:
    suite = _tiny_suite()
    sequential = run_benchmark(suite, tmp_path / "seq", progress=False)
    parallel = run_benchmark(suite, tmp_path / "ray", progress=False,
                             executor=RayExecutor(workers=2, cpus_per_run=1))  # fmt: skip
    assert len(_stored(tmp_path / "seq")) == 2
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "seq")
    clock = ("wall_s", "train_s")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in clock} for r in rows]  # noqa: E731
    assert drop(parallel) == drop(sequential)  # the same rows, in plan order
    assert ray.is_initialized(), "an executor that joined a running Ray leaves it running"


def test_a_unit_whose_worker_dies_is_run_again(tmp_path, local_ray) -> None:
    suite = Suite(name="stub", base={"data": {"path": "synthetic"}}, fusions=["concat", "moe"], adaptations=["head"],
                  seeds=2, pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[2], unimodal=False)  # fmt: skip
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def crash_once(config, adaptations):
        name = f"{config['fusion']['name']}-{config['seed']}"
        first = not (attempts / name).exists()
        (attempts / name).write_text("1" if first else "2")
        if name == "moe-1" and first:
            os._exit(1)  # the worker process dies mid-unit, as a killed or OOM worker would
        return _stub_unit(config, adaptations)

    rows = run_benchmark(suite, tmp_path / "out", run_unit=crash_once, progress=False,
                         executor=RayExecutor(workers=2, max_retries=2))  # fmt: skip
    assert len(rows) == 4 and len(list((tmp_path / "out" / "runs").glob("*.json"))) == 4
    assert (attempts / "moe-1").read_text() == "2" and (attempts / "concat-0").read_text() == "1"
    (attempts / "moe-1").unlink()
    with pytest.raises(ray.exceptions.WorkerCrashedError):  # no retries left: the error says so
        run_benchmark(suite, tmp_path / "again", run_unit=crash_once, progress=False,
                      executor=RayExecutor(workers=1, max_retries=0), fusions=["moe"])  # fmt: skip
    assert len(list((tmp_path / "again" / "runs").glob("*.json"))) == 1  # moe-0 is kept
