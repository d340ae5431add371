"""Maps over shards, for the batch work: document inference, offline mining and evaluation.

Batch work receives a `Shards` (a runner and a progress callback, passed as an argument, never ambient): it
cuts its rows into shards (`shards.rows(n)`) and calls `shards.map(fn, items, what)`. Results come back in
shard order and every shard is computed the same way wherever it runs, so the output does not depend on the
runner. `open_shards(conf/runner)` gives the configured one for the duration of a `with` block (the retrain
flow's, with Prefect progress artifacts); `SERIAL` runs one shard after the other in this process.

    serial      in this process, one shard after the other
    threads     a thread pool (torch and faiss release the GIL; faiss runs one OpenMP thread per pool thread)
    processes   a pool of spawned processes on this machine
    dask        a Dask cluster, through prefect-dask's DaskTaskRunner: a LocalCluster started for the run,
                or the scheduler at `runner.address` (a multi-machine cluster)

`fn` is usually a `functools.partial` of a module-level function over the step's shared state (a tower, the
document vectors, an ANN index); a shard item is small (a slice of rows). On Dask the function is sent once to
every worker (`scatter(broadcast=True)`), on processes once per process, and only the items travel per shard.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

KINDS = ("serial", "threads", "processes", "dask")
DEFAULT_SHARD_ROWS = 65536


class ShardRunner(Protocol):
    """Runs `fn` over items; results in item order."""

    kind: str
    shard_rows: int

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """Results in item order, each yielded as soon as it and those before it are done."""
        ...


class SerialRunner:
    kind = "serial"

    def __init__(self, shard_rows: int = DEFAULT_SHARD_ROWS) -> None:
        self.shard_rows = shard_rows

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        return (fn(item) for item in items)


class ThreadRunner:
    kind = "threads"

    def __init__(self, pool: ThreadPoolExecutor, shard_rows: int) -> None:
        self.pool, self.shard_rows = pool, shard_rows

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        return self.pool.map(fn, items)


class ProcessRunner:
    """A fresh spawned pool per map, whose initializer receives `fn` once per process."""

    kind = "processes"

    def __init__(self, workers: int | None, shard_rows: int) -> None:
        self.workers, self.shard_rows = workers, shard_rows

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        context = multiprocessing.get_context("spawn")
        workers = min(self.workers or multiprocessing.cpu_count(), len(items))
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_install, initargs=(fn,)) as pool:
            yield from pool.map(_call_installed, items)


_INSTALLED: list[Callable[[Any], Any]] = []


def _install(fn: Callable[[Any], Any]) -> None:
    _INSTALLED[:] = [fn]


def _call_installed(item: Any) -> Any:
    return _INSTALLED[0](item)


class DaskRunner:
    """Shards on the Dask cluster of a started prefect-dask DaskTaskRunner (its distributed client)."""

    kind = "dask"

    def __init__(self, task_runner: Any, shard_rows: int) -> None:
        self.task_runner, self.shard_rows = task_runner, shard_rows

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        client = self.task_runner.client
        shared = client.scatter(fn, broadcast=True, hash=False)
        futures = client.map(_apply, [shared] * len(items), list(items), pure=False)
        for future in futures:
            yield future.result()


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


Progress = Callable[[str, float], None]  # (what, fraction done): e.g. a Prefect progress artifact


@dataclass(frozen=True)
class Shards:
    """Where batch work runs (`runner`) and where its progress goes (`progress`, None: nowhere)."""

    runner: ShardRunner = field(default_factory=SerialRunner)
    progress: Progress | None = None

    def report(self, what: str, fraction: float) -> None:
        """`what` (a short name of the work, e.g. "train text") is `fraction` (0 to 1) done."""
        if self.progress is not None:
            self.progress(what, min(max(float(fraction), 0.0), 1.0))

    def map(self, fn: Callable[[T], R], items: Sequence[T], what: str = "shards") -> list[R]:
        """`[fn(item) for item in items]` on the runner, in item order; progress reported as `what`."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        start = time.perf_counter()
        out = []
        for result in self.runner.map(fn, items):
            out.append(result)
            self.report(what, len(out) / len(items))
        log.info(
            "%s: %d shards on %s in %.1f s", what, len(items), self.runner.kind, time.perf_counter() - start
        )
        return out

    def rows(self, n: int, size: int | None = None) -> list[slice]:
        """Consecutive slices covering range(n), `size` rows each (default: the runner's shard_rows)."""
        size = int(size or self.runner.shard_rows)
        if size < 1:
            raise ValueError(f"shard size must be >= 1, got {size}")
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def with_progress(self, progress: Progress | None) -> Shards:
        return Shards(self.runner, progress)


SERIAL = Shards()


@contextmanager
def open_shards(rcfg: Mapping[str, Any] | None, progress: Progress | None = None) -> Iterator[Shards]:
    """The runner described by `rcfg` (conf/runner/*.yaml) for the `with` block, torn down after it."""
    rcfg = dict(rcfg or {})
    kind = str(rcfg.get("kind", "serial"))
    shard_rows = int(rcfg.get("shard_rows") or DEFAULT_SHARD_ROWS)
    workers = rcfg.get("workers")
    if kind not in KINDS:
        raise ValueError(f"runner.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if shard_rows < 1:
        raise ValueError(f"runner.shard_rows must be >= 1, got {shard_rows}")
    if kind == "threads":
        threads = workers or os.cpu_count() or 1
        with ThreadPoolExecutor(threads, "ebr-shard", initializer=_single_threaded_faiss) as pool:
            yield Shards(ThreadRunner(pool, shard_rows), progress)
    elif kind == "processes":
        yield Shards(ProcessRunner(workers, shard_rows), progress)
    elif kind == "dask":
        with dask_task_runner(rcfg) as task_runner:
            yield Shards(DaskRunner(task_runner, shard_rows), progress)
    else:
        yield Shards(SerialRunner(shard_rows), progress)


def _single_threaded_faiss() -> None:
    """One OpenMP thread for faiss in this pool thread (a per-thread setting): the pool is the parallelism."""
    import faiss

    faiss.omp_set_num_threads(1)


def dask_task_runner(rcfg: Mapping[str, Any]) -> Any:
    """prefect-dask's DaskTaskRunner: the scheduler at `rcfg.address`, else a LocalCluster(**rcfg.cluster)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError("runner=dask needs prefect-dask (pip install prefect-dask)") from exc
    address = rcfg.get("address")
    if address:
        return DaskTaskRunner(address=str(address))
    cluster = dict(rcfg.get("cluster") or {})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)
