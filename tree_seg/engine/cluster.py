"""Dask client set-up and the executor that maps per-chunk tasks over it.

:func:`open_client` turns :class:`~tree_seg.config.EngineConfig` into a Dask
client: a ``LocalCluster`` started here (the default), Dask's synchronous
scheduler in this process (``scheduler="synchronous"``), or a running
scheduler at an address (any other value). When the ``tree_seg`` logger
of this process shows debug records, the workers of such a client forward
theirs to it. :class:`Executor` runs one pass:
a map of a per-chunk function over chunks, optionally followed by a tree
reduction. The grouping of that reduction depends only on the chunk order,
so a result does not depend on the number of workers or on which task
finishes first.

GPU workers. Feature tasks carry the Dask resource annotation ``GPU: 1`` when
at least one worker of the cluster advertises a ``GPU`` resource. Such tasks
then run only on those workers, one at a time per GPU. Workers advertise it
when started with ``dask worker ADDRESS --resources GPU=1`` or
``dask cuda worker ADDRESS --resources GPU=1`` (dask-cuda, one worker per GPU).
Without any such worker no task is annotated, because a task that needs an
absent resource never runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import reduce
from typing import Any, Protocol, TypeVar

import dask
import psutil
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from tree_seg import exceptions
from tree_seg.config import EngineConfig
from tree_seg.engine.layout import Block
from tree_seg.engine.progress import chunk_bar
from tree_seg.exceptions import ClusterStartError, TreeSegError

__all__ = ["Executor", "LocalClusterSize", "local_cluster_size", "open_client", "tree_reduce", "workers_have_gpu"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SPLIT_EVERY = 8
"""Partial results combined per node of a tree reduction."""

_LOG_LEVEL_PLUGIN = "tree_seg-log-level"
"""Name of the worker plugin that sets the workers' ``tree_seg`` log level."""

_CANCELLED_TASKS_PLUGIN = "tree_seg-quiet-cancelled-tasks"
"""Name of the worker plugin that hides the warnings about cancelled tasks."""

_EXPECTED_ERRORS_PLUGIN = "tree_seg-quiet-expected-worker-errors"
"""Name of the worker plugin that hides the worker errors that this process reports itself."""

_TRIM_THRESHOLD_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
"""Dask setting whose None value leaves glibc's trim threshold unset in local workers.

Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in new workers by default, so
that they return freed memory to the system. glibc then stops adapting its
mmap threshold, so every array above 128 KiB is mapped and unmapped anew,
and the backbone ran 15% slower (9.9 s against 8.7 s for the features of a
2048 px tile on one thread). The price is the memory that glibc keeps for
reuse: the peak RSS per worker in the engine memory benchmark rose from
about 650 to 900 MiB. A value set in the environment still applies.
"""

_ARENA_MAX_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX"
"""Dask setting that limits glibc to two heaps (arenas) per local worker.

With the trim threshold unset, each thread of a worker that allocates gets
a heap of its own and keeps what it freed. The peak RSS per worker then
varied by 200 MiB between runs (840-1120 MiB on an 8192 px raster). With
two heaps it stayed at 880-910 MiB on 4096 and 8192 px rasters, and the
backbone ran as fast (within 4%, one thread). A value set in the
environment wins.
"""


class LocalClusterSize:
    """Worker processes, threads and memory of the default local cluster.

    Attributes
    ----------
    n_workers : int
        Worker processes.
    threads_per_worker : int
        Threads per worker process.
    memory_limit : int
        Bytes per worker, the machine's memory divided among the workers.
    resources : dict of str to float
        Resources each worker advertises, ``{"GPU": 1}`` when it gets the GPU.
    """

    def __init__(self, n_workers: int, threads_per_worker: int, memory_limit: int, resources: dict[str, float]):
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit
        self.resources = resources

    def __repr__(self) -> str:
        return (f"LocalClusterSize(n_workers={self.n_workers}, threads_per_worker={self.threads_per_worker}, "
                f"memory_limit={self.memory_limit}, resources={self.resources})")


def local_cluster_size(workers: int | None, *, use_gpu: bool) -> LocalClusterSize:
    """Size the default ``LocalCluster`` for this machine.

    Without a GPU: ``workers`` processes (default: one per CPU core that this
    process may use) of one thread each. With a GPU and no ``workers``: one
    process holding the model once, with one thread per core and the ``GPU``
    resource, so feature tasks take the GPU one at a time while the other
    threads run CPU passes. An explicit ``workers`` with a GPU gives every
    process the resource, and each loads the model on the same device. For
    several GPUs use dask-cuda (see ``distributed/README.md``).

    Parameters
    ----------
    workers : int or None
        Worker processes, or None to size by the machine.
    use_gpu : bool
        Whether the backbone will run on a local CUDA device.

    Returns
    -------
    LocalClusterSize
    """
    total_memory = psutil.virtual_memory().total
    resources = {"GPU": 1.0} if use_gpu else {}
    if use_gpu and workers is None:
        return LocalClusterSize(1, CPU_COUNT, total_memory, resources)
    n_workers = workers or CPU_COUNT
    return LocalClusterSize(n_workers, 1, total_memory // n_workers, resources)


@contextmanager
def open_client(
    engine: EngineConfig, *, use_gpu: bool = False, dashboard_address: str = "127.0.0.1:8787"
) -> Iterator[Client | None]:
    """Open the Dask client that ``engine.scheduler`` names, and close it on exit.

    Parameters
    ----------
    engine : EngineConfig
        ``scheduler`` None starts a ``LocalCluster`` of processes on this
        machine, sized by :func:`local_cluster_size` and listening on
        loopback only. ``"synchronous"`` yields None, and the engine then
        runs every task in this process with Dask's synchronous scheduler.
        Any other value is the address of a running scheduler, e.g.
        ``"tcp://10.0.0.5:8786"``, which is left running on exit.
    use_gpu : bool, default=False
        Size a local cluster for a local CUDA device.
    dashboard_address : str, default="127.0.0.1:8787"
        Where a local cluster serves its dashboard; ``":0"`` picks a free port.

    Yields
    ------
    distributed.Client or None
    """
    if engine.scheduler == "synchronous":
        logger.info("Running every task in this process with Dask's synchronous scheduler")
        yield None
        return

    if engine.scheduler is not None:
        # distributed retries a refused connection until this timeout, so a
        # scheduler that is still starting (as in a batch script) is found.
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        logger.info("Connecting to the Dask scheduler at %s (waiting up to %s, the Dask setting "
                    "distributed.comm.timeouts.connect)", engine.scheduler, timeout)
        try:
            connected = Client(engine.scheduler)
        except (OSError, ValueError, TypeError) as error:
            # distributed raises ValueError for an inproc:// address of another
            # process and TypeError for a transport it cannot load, such as ucx://.
            raise ClusterStartError(f"failed to connect to the Dask scheduler at {engine.scheduler} ({error}): check "
                                    "that it runs and that the address is right, or drop --scheduler") from error
        with connected as client:
            n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
            logger.info("Connected to %s with %d workers; dashboard %s", engine.scheduler, n_workers,
                        client.dashboard_link)
            with _debug_logs_forwarded(client):
                yield client
        return

    size = local_cluster_size(engine.workers, use_gpu=use_gpu)
    logger.info("Starting a LocalCluster: %d worker process(es), %d thread(s) each, %.1f GiB each, resources %s",
                size.n_workers, size.threads_per_worker, size.memory_limit / 2**30, size.resources or "none")
    try:
        allocator: dict[str, int | None] = {_TRIM_THRESHOLD_KEY: None}
        if "MALLOC_ARENA_MAX" not in os.environ:
            allocator[_ARENA_MAX_KEY] = 2
        with _interrupts_ignored_by_new_processes(), dask.config.set(allocator):
            cluster = LocalCluster(
                n_workers=size.n_workers,
                threads_per_worker=size.threads_per_worker,
                processes=True,
                host="127.0.0.1",
                memory_limit=size.memory_limit,
                dashboard_address=dashboard_address,
                resources=size.resources or None,
            )
    except RuntimeError as error:
        # Worker processes start by importing the main module, so a script
        # that starts the engine at import time cannot start workers.
        raise ClusterStartError(
            f"failed to start the local Dask cluster ({error}): in a Python script, run the engine under "
            "`if __name__ == \"__main__\":`, or pass scheduler='synchronous' to run in this process"
        ) from error
    # Closing a local cluster in the middle of a computation makes Dask warn
    # about each lost task and key. After an interrupt these warnings are
    # expected, so they are hidden until the cluster is closed.
    dask_logger = logging.getLogger("distributed")
    asyncio_logger = logging.getLogger("asyncio")
    levels = dask_logger.level, asyncio_logger.level
    try:
        with cluster, Client(cluster) as client:
            logger.info("Dask dashboard: %s", client.dashboard_link)
            # This logger's only warning reports a task cancelled by an
            # interrupt or by a failed input, once per task, and the CLI
            # already reports the cause.
            client.register_plugin(_LogLevel("distributed.worker.state_machine", logging.ERROR),
                                   name=_CANCELLED_TASKS_PLUGIN)
            client.register_plugin(_ExpectedErrorsHidden(), name=_EXPECTED_ERRORS_PLUGIN)
            try:
                with _debug_logs_forwarded(client):
                    yield client
            except KeyboardInterrupt:
                # The client's cancelled gathers end as asyncio tasks whose
                # AllExit exception is never retrieved, which asyncio logs.
                dask_logger.setLevel(logging.ERROR)
                asyncio_logger.setLevel(logging.CRITICAL)
                raise
    finally:
        dask_logger.setLevel(levels[0])
        asyncio_logger.setLevel(levels[1])


class _LogLevel(WorkerPlugin):
    # Sets a logger's level in every worker process, including workers that
    # join or restart later, and restores it when unregistered.

    def __init__(self, name: str, level: int):
        self.name = name
        self.level = level
        self.previous = logging.NOTSET

    def setup(self, worker: Any) -> None:
        self.previous = logging.getLogger(self.name).level
        logging.getLogger(self.name).setLevel(self.level)

    def teardown(self, worker: Any) -> None:
        logging.getLogger(self.name).setLevel(self.previous)


class _ExpectedErrorsHidden(WorkerPlugin):
    # Drops two kinds of error records in every worker process of a local
    # cluster (see _keep_worker_record).

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(_keep_worker_record)

    def teardown(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").removeFilter(_keep_worker_record)


_TREE_SEG_ERRORS = frozenset(
    name for name, value in vars(exceptions).items() if isinstance(value, type) and issubclass(value, TreeSegError)
)


def _keep_worker_record(record: logging.LogRecord) -> bool:
    # - A failed heartbeat: when an interrupt closes the cluster, the
    #   scheduler can close before a worker's next heartbeat. The scheduler
    #   runs in the client's process, so this can only mean it is closing.
    # - "Compute Failed" with a traceback for a task that raised one of
    #   tree_seg's own errors, which the client reports in one line.
    message = str(record.msg)
    if message.startswith("Failed to communicate with scheduler during heartbeat"):
        return False
    if message.startswith("Compute Failed") and isinstance(record.args, tuple) and len(record.args) > 3:
        # args[3] is the exception's repr, e.g. "WeightsMismatchError('...')".
        return str(record.args[3]).split("(", 1)[0] not in _TREE_SEG_ERRORS
    return True


@contextmanager
def _debug_logs_forwarded(client: Client) -> Iterator[None]:
    # Records logged in worker processes stay there, so the per-chunk debug
    # lines of tasks would never show. When this process shows tree_seg's
    # debug records, the workers log theirs too and forward them here, until
    # the block ends, which matters on a cluster that outlives this client.
    if not logging.getLogger("tree_seg").isEnabledFor(logging.DEBUG):
        yield
        return
    client.register_plugin(_LogLevel("tree_seg", logging.DEBUG), name=_LOG_LEVEL_PLUGIN)
    client.forward_logging("tree_seg", level=logging.DEBUG)
    try:
        yield
    finally:
        try:
            client.unforward_logging("tree_seg")
            client.unregister_worker_plugin(_LOG_LEVEL_PLUGIN)
        except Exception as error:  # A lost scheduler must not hide the run's own outcome.
            logger.warning("failed to stop forwarding worker logs to this process: %s", error)


@contextmanager
def _interrupts_ignored_by_new_processes() -> Iterator[None]:
    # A terminal's Ctrl-C reaches every process of the group. Workers started
    # while SIGINT is ignored keep ignoring it (Python leaves it so at startup),
    # so only this process gets the KeyboardInterrupt, and it closes the cluster.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def workers_have_gpu(client: Client | None) -> bool:
    """Return whether any worker of the cluster advertises a ``GPU`` resource."""
    if client is None:
        return False
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(_advertises_gpu(worker) for worker in workers)


def _advertises_gpu(worker_info: dict[str, Any]) -> bool:
    # worker_info is one entry of the scheduler's "workers" description.
    return float(worker_info.get("resources", {}).get("GPU", 0)) > 0


def tree_reduce(items: Sequence[T], combine: Callable[..., T], *, split_every: int = SPLIT_EVERY,
                submit: Callable[..., Any] | None = None) -> Any:
    """Reduce items by combining consecutive groups of ``split_every``, level by level.

    The grouping depends only on the order of ``items``, so floating-point
    sums come out the same however the work is scheduled.

    Parameters
    ----------
    items : sequence
        Partial results, or futures of them, in chunk order; at least one.
    combine : callable
        ``combine(*group)`` returns the combined partial result.
    split_every : int, default=8
        Group size.
    submit : callable, optional
        ``submit(combine, *group)`` that returns a future (``Client.submit``);
        without it the groups are combined here.

    Returns
    -------
    The combined result, or its future when ``submit`` is given.
    """
    level = list(items)
    while len(level) > 1:
        groups = [level[i:i + split_every] for i in range(0, len(level), split_every)]
        if submit is None:
            level = [combine(*group) if len(group) > 1 else group[0] for group in groups]
        else:
            level = [submit(combine, *group) if len(group) > 1 else group[0] for group in groups]
    return level[0]


def combine_all(combine: Callable[[T, T], T]) -> Callable[..., T]:
    """Turn a pairwise ``combine(a, b)`` into ``combine_many(*parts)`` that adds left to right."""
    def combine_many(*parts: T) -> T:
        return reduce(combine, parts)

    combine_many.__name__ = f"combine_{getattr(combine, '__name__', 'parts')}"
    return combine_many


class _Indexed(Protocol):
    # A work item of Executor.map: a Block or a SeamWork.
    @property
    def index(self) -> tuple[int, ...]: ...


class Executor:
    """Runs the per-chunk tasks of the engine's passes on a client, or in this process.

    Parameters
    ----------
    client : distributed.Client or None
        None runs every task with Dask's synchronous scheduler here.
    progress : bool
        Show a progress bar per pass.
    """

    def __init__(self, client: Client | None, *, progress: bool) -> None:
        self.client = client
        self.progress = progress
        self.gpu = workers_have_gpu(client)
        if self.gpu:
            logger.info("Workers advertise a GPU resource, so feature tasks are annotated with GPU=1")

    def _annotations(self, gpu: bool) -> dict[str, Any]:
        return {"resources": {"GPU": 1}} if gpu and self.gpu else {}

    def run(self, func: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        """Run one task and return its result (on a GPU worker when ``gpu`` and one exists)."""
        if self.client is None:
            return func(*args)
        annotations = self._annotations(gpu)
        future = self.client.submit(func, *args, pure=False, **annotations)
        return future.result()

    def run_on_each_worker(self, func: Callable[..., T], *args: Any, gpu: bool = False) -> list[T]:
        """Run one task on each worker that ``gpu`` tasks may use, all at once, and return the results.

        The engine loads the backbone this way, so that workers load it in
        parallel, not one after another when each gets its first chunk. In
        this process when there is no client.
        """
        if self.client is None:
            return [func(*args)]
        annotations = self._annotations(gpu)
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        addresses = [address for address, info in workers.items() if not annotations or _advertises_gpu(info)]
        futures = [self.client.submit(func, *args, pure=False, workers=[address], allow_other_workers=False,
                                      **annotations) for address in addresses]
        return self.client.gather(futures)

    @property
    def n_workers(self) -> int:
        """Return the number of workers, 1 when the tasks run in this process."""
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def _delayed_tasks(self, func: Callable[..., Any], blocks: Sequence[_Indexed], args: tuple[Any, ...],
                       name: str, gpu: bool) -> list[Any]:
        token = uuid.uuid4().hex[:8]
        if self.client is not None:
            # Copied to every worker once, so each task finds its shared
            # arguments locally and the scheduler spreads tasks by load, not
            # towards the one worker that would hold a single copy.
            # Each argument goes in a one-item list, because scatter splits a
            # list, tuple or dict argument into one future per item.
            shared = [self.client.scatter([arg], broadcast=True, hash=False)[0] for arg in args]
        else:
            shared = [dask.delayed(arg, name=f"{name}-arg{i}-{token}", traverse=False)
                      for i, arg in enumerate(args)]
        with dask.annotate(**self._annotations(gpu)):
            return [
                dask.delayed(func, pure=False, traverse=False)(
                    *shared, block, dask_key_name=f"{name}-{'-'.join(map(str, block.index))}-{token}"
                )
                for block in blocks
            ]

    def _futures(self, tasks: list[Any], description: str,
                 on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        assert self.client is not None
        futures = self.client.compute(tasks, optimize_graph=False)
        position = {future.key: i for i, future in enumerate(futures)}
        bar = chunk_bar(len(futures), description, enabled=self.progress)
        try:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()
                if on_result is not None:
                    on_result(position[future.key], future.result())
                bar.update(1)
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            bar.close()
        return futures

    def map(self, func: Callable[..., T], blocks: Sequence[_Indexed], *args: Any, description: str,
            gpu: bool = False, on_result: Callable[[Any, T], None] | None = None) -> list[T]:
        """Run ``func(*args, block)`` for every block and return the results in block order.

        Parameters
        ----------
        func : callable
            Per-chunk task; ``args`` come first and the block last.
        blocks : sequence of Block or SeamWork
            Chunks to run, or other work items with a unique ``index``.
        *args
            Arguments shared by every task, sent once.
        description : str
            Progress bar label, also the task-name prefix in the dashboard.
        gpu : bool, default=False
            Annotate the tasks with ``GPU: 1`` when workers have GPUs.
        on_result : callable, optional
            Called as ``on_result(block, result)`` in this process as each
            task finishes, in the order they finish.
        """
        if not blocks:
            return []
        name = description.replace(" ", "-")
        tasks = self._delayed_tasks(func, blocks, args, name, gpu)
        if self.client is not None:
            report = None
            if on_result is not None:
                def report(position: int, result: Any) -> None:
                    on_result(blocks[position], result)
            return self.client.gather(self._futures(tasks, description, report))

        results = []
        with chunk_bar(len(tasks), description, enabled=self.progress) as bar:
            for block, task in zip(blocks, tasks):
                (result,) = dask.compute(task, scheduler="synchronous", optimize_graph=False)
                if on_result is not None:
                    on_result(block, result)
                results.append(result)
                bar.update(1)
        return results

    def map_reduce(self, func: Callable[..., T], blocks: Sequence[Block], *args: Any, combine: Callable[..., T],
                   description: str, split_every: int = SPLIT_EVERY) -> T:
        """Map ``func`` over blocks as :meth:`map` does, then tree-reduce the results with ``combine``.

        ``combine(*parts)`` runs on the workers for a distributed client, so
        only the final result travels back.
        """
        client = self.client
        if client is None:
            return tree_reduce(self.map(func, blocks, *args, description=description), combine,
                               split_every=split_every)

        name = description.replace(" ", "-")
        futures = self._futures(self._delayed_tasks(func, blocks, args, name, gpu=False), description)
        root = tree_reduce(futures, combine, split_every=split_every,
                           submit=lambda f, *group: client.submit(f, *group, pure=False))
        return root.result()
