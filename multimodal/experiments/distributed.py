"""Where a benchmark's units run: one after another in this process, or as Ray tasks on
a local Ray instance or an existing cluster. Ray is imported only by ``RayExecutor``.

Each unit is a pure function of its config (seeded stages, no shared state), so the
executor changes when and where a unit runs, never what it computes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

UnitFn = Callable[[dict[str, Any], list[str]], dict[str, Any]]
Job = tuple[dict[str, Any], list[str]]  # a unit's config and the adaptations it still needs


class Executor(Protocol):
    """Runs ``fn`` on each job and yields ``(job index, result)`` as each one finishes."""

    def map(self, fn: UnitFn, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]: ...

    def close(self) -> None: ...


class SequentialExecutor:
    """Every unit in this process, in plan order."""

    def map(self, fn: UnitFn, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, (config, arms) in enumerate(jobs):
            yield index, fn(config, arms)

    def close(self) -> None:
        pass


def _in_driver_folder(fn: UnitFn, cwd: str, threads: int, config: dict[str, Any],
                      arms: list[str]) -> dict[str, Any]:  # fmt: skip
    """Run ``fn`` from the driver's working folder (relative data paths in a suite) with
    ``threads`` intra-op threads: the order of float sums follows the thread count, so a
    unit computes the same numbers as in the driver only with the driver's count."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(threads)
    return fn(config, arms)


@dataclass
class RayExecutor:
    """Units as Ray tasks, at most ``workers`` in flight, each holding ``cpus_per_run``
    CPUs and ``gpus_per_run`` GPUs. ``address`` None starts a local Ray instance sized for
    the workers; ``"auto"`` or ``"ray://HOST:PORT"`` joins an existing cluster, whose nodes
    need this package installed. A task whose worker process dies is run again, up to
    ``max_retries`` times (Ray's own retry); results arrive in completion order.

    ``threads_per_run`` (default: this process's torch thread count) sets each unit's
    intra-op threads. The default makes a unit's numbers those of a sequential run on this
    machine, even when that oversubscribes the CPUs; ``cpus_per_run`` threads avoid that
    and give numbers that match a sequential run with as many threads.
    """

    workers: int | None = None
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3
    threads_per_run: int | None = None

    def __post_init__(self) -> None:
        try:
            import ray
        except ImportError as error:
            raise ImportError(
                'running units on Ray needs the distributed extra: pip install "transferfuse[distributed]"'
            ) from error
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        import torch

        self._ray, self._remote, self._owns = ray, None, False
        self.threads_per_run = self.threads_per_run or torch.get_num_threads()

    def _start(self) -> Any:
        """Ray, started (or joined) on first use: a benchmark whose units are all stored
        runs none and starts nothing."""
        if self._remote is not None:
            return self._remote
        ray = self._ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if self.address is None:
                workers = self.workers or 1
                ray.init(num_cpus=max(1, round(workers * self.cpus_per_run)),
                         num_gpus=round(workers * self.gpus_per_run) if self.gpus_per_run else None,
                         include_dashboard=False, log_to_driver=True)  # fmt: skip
            else:
                ray.init(address=self.address, log_to_driver=True)
        # Oversubscribed OpenMP threads that spin while waiting slow every worker down.
        passive = self.threads_per_run > self.cpus_per_run
        self._remote = ray.remote(_in_driver_folder).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
            retry_exceptions=False,
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}} if passive else None,
        )  # fmt: skip
        return self._remote

    def map(self, fn: UnitFn, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not jobs:
            return
        ray, cwd, remote = self._ray, os.getcwd(), self._start()
        threads = self.threads_per_run
        limit = self.workers or len(jobs)
        pending: dict[Any, int] = {}
        queue = list(enumerate(jobs))
        while queue or pending:
            while queue and len(pending) < limit:
                index, (config, arms) = queue.pop(0)
                pending[remote.remote(fn, cwd, threads, config, arms)] = index
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()
            self._owns, self._remote = False, None
