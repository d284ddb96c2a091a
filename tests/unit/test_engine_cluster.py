"""Client set-up, the executor, tree reductions and progress bars of the Dask engine."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster, get_worker

from tree_seg.config import EngineConfig
from tree_seg.engine.cluster import Executor, local_cluster_size, open_client, tree_reduce, workers_have_gpu
from tree_seg.engine.layout import iter_blocks
from tree_seg.engine.progress import progress_enabled
from tree_seg.exceptions import ClusterStartError


def _first_origin_row(work):
    return work.origins[0][0]


def _pair(*parts):
    return tuple(parts)


def _column_plus(offset, block):
    return offset + block.index[1]


def _fail_on_third(block):
    if block.index[1] == 2:
        raise ValueError(f"chunk {block.index} failed")
    return block.index[1]


def _resource_restrictions(block):
    worker = get_worker()
    return worker.state.tasks[worker.get_current_task()].resource_restrictions


@pytest.fixture(scope="module")
def gpu_client():
    # Threads in this process: a cluster that starts in about a second, with
    # workers that advertise a GPU resource.
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0",
                     resources={"GPU": 1}) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_tree_reduce_groups_in_order():
    assert tree_reduce(list(range(5)), _pair, split_every=2) == (((0, 1), (2, 3)), 4)


def test_tree_reduce_single_item():
    assert tree_reduce([7], _pair) == 7


def test_tree_reduce_submit_same_grouping():
    submitted = []

    def submit(func, *group):
        submitted.append(len(group))
        return func(*group)

    items = list(range(20))
    assert tree_reduce(items, _pair, split_every=8, submit=submit) == tree_reduce(items, _pair, split_every=8)
    assert submitted == [8, 8, 4, 3]


def test_local_cluster_size_cpu():
    size = local_cluster_size(3, use_gpu=False)
    assert size.n_workers == 3
    assert size.threads_per_worker == 1
    assert size.resources == {}
    assert size.memory_limit > 0


def test_local_cluster_size_gpu_one_process():
    size = local_cluster_size(None, use_gpu=True)
    assert size.n_workers == 1
    assert size.threads_per_worker >= 1
    assert size.resources == {"GPU": 1.0}


def test_open_client_synchronous_yields_none():
    with open_client(EngineConfig(scheduler="synchronous")) as client:
        assert client is None


def test_open_client_connects_to_address(gpu_client):
    address = gpu_client.scheduler.address
    with open_client(EngineConfig(scheduler=address)) as client:
        assert client.scheduler.address == address
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    assert gpu_client.status == "running"


def _worker_name():
    return get_worker().name


def test_run_on_each_worker_reaches_every_worker():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        names = Executor(client, progress=False).run_on_each_worker(_worker_name)

    assert sorted(names) == [0, 1]


def test_run_on_each_worker_without_client_runs_here():
    assert Executor(None, progress=False).run_on_each_worker(_pair, 1, 2) == [(1, 2)]


def test_unreachable_scheduler_names_address_and_wait(caplog):
    caplog.set_level(logging.INFO, logger="tree_seg.engine.cluster")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ClusterStartError, match=r"failed to connect to the Dask scheduler at tcp://127\.0\.0\.1:1 "):
            with open_client(EngineConfig(scheduler="tcp://127.0.0.1:1")):
                pass

    # The log gives how long a refused connection is retried.
    assert "tcp://127.0.0.1:1 (waiting up to 1s" in caplog.text


def test_open_client_foreign_inproc_address_names_address():
    # An in-process address of another process cannot be reached from here.
    with pytest.raises(ClusterStartError, match=r"failed to connect to the Dask scheduler at inproc://127\.0\.0\.1/999/1"):
        with open_client(EngineConfig(scheduler="inproc://127.0.0.1/999/1")):
            pass


def test_executor_synchronous_map_in_order():
    executor = Executor(None, progress=False)
    blocks = list(iter_blocks((2, 5), 1))
    assert executor.map(_column_plus, blocks, 10, description="test") == [10, 11, 12, 13, 14] * 2
    assert not executor.gpu


@pytest.mark.parametrize("distributed", [False, True])
def test_executor_map_reports_each_result(distributed, request):
    client = request.getfixturevalue("gpu_client") if distributed else None
    executor = Executor(client, progress=False)
    blocks = list(iter_blocks((2, 3), 1))
    reported = []

    results = executor.map(_column_plus, blocks, 10, description="test",
                           on_result=lambda block, result: reported.append((block.index, result)))

    assert results == [10, 11, 12] * 2
    assert sorted(reported) == sorted((block.index, 10 + block.index[1]) for block in blocks)


def test_executor_map_names_tasks_by_whole_index(gpu_client):
    # Work items with three-part indices that share their first two parts
    # must still get tasks of their own.
    from tree_seg.engine.layout import Block, SeamWork

    block = Block((0, 0), slice(0, 1), slice(0, 1))
    work = [SeamWork((0, 0, part), block, ((part, 0),)) for part in range(3)]

    assert Executor(gpu_client, progress=False).map(_first_origin_row, work, description="test") == [0, 1, 2]


def test_executor_synchronous_map_reduce():
    executor = Executor(None, progress=False)
    blocks = list(iter_blocks((1, 5), 1))
    result = executor.map_reduce(_column_plus, blocks, 0, combine=_pair, description="test", split_every=2)
    assert result == (((0, 1), (2, 3)), 4)


def test_executor_distributed_matches_synchronous(gpu_client):
    blocks = list(iter_blocks((1, 9), 1))
    local = Executor(None, progress=False).map_reduce(_column_plus, blocks, 1, combine=_pair, description="test")
    remote = Executor(gpu_client, progress=False).map_reduce(_column_plus, blocks, 1, combine=_pair,
                                                             description="test")
    assert remote == local


def test_executor_annotates_gpu_tasks(gpu_client):
    executor = Executor(gpu_client, progress=False)
    blocks = list(iter_blocks((1, 3), 1))
    assert executor.gpu
    assert workers_have_gpu(gpu_client)
    assert executor.map(_resource_restrictions, blocks, description="gpu", gpu=True) == [{"GPU": 1}] * 3
    assert executor.map(_resource_restrictions, blocks, description="cpu") == [None] * 3


def test_executor_raises_task_error(gpu_client):
    executor = Executor(gpu_client, progress=False)
    with pytest.raises(ValueError, match=r"chunk \(0, 2\) failed"):
        executor.map(_fail_on_third, list(iter_blocks((1, 4), 1)), description="failing")


def test_workers_have_gpu_without_client():
    assert not workers_have_gpu(None)


def test_progress_enabled_follows_logging():
    logger = logging.getLogger("tree_seg")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not progress_enabled(None)
        logger.setLevel(logging.INFO)
        assert progress_enabled(None)
        assert not progress_enabled(False)
    finally:
        logger.setLevel(level)


def _malloc_settings():
    return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_ARENA_MAX"),
            os.environ.get("OMP_NUM_THREADS"))


def test_open_client_local_workers_glibc_settings(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with open_client(EngineConfig(workers=1), dashboard_address="127.0.0.1:0") as client:
        settings = list(client.run(_malloc_settings).values())

    assert settings == [(None, "2", "1")]


def test_open_client_keeps_arena_max_from_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with open_client(EngineConfig(workers=1), dashboard_address="127.0.0.1:0") as client:
        settings = list(client.run(_malloc_settings).values())

    assert settings[0][1] == "4"


def test_open_client_forwards_worker_debug_records(caplog):
    caplog.set_level(logging.DEBUG, logger="tree_seg")
    with open_client(EngineConfig(workers=1), dashboard_address="127.0.0.1:0") as client:
        client.run(lambda: logging.getLogger("tree_seg.engine.tasks").debug("chunk done in worker %d", os.getpid()))
        worker_pid = next(iter(client.run(os.getpid).values()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("chunk done" in r.getMessage() for r in caplog.records):
            time.sleep(0.1)

    messages = [record.getMessage() for record in caplog.records if record.name == "tree_seg.engine.tasks"]
    assert messages == [f"chunk done in worker {worker_pid}"]


def test_open_client_keeps_worker_records_without_debug(caplog):
    caplog.set_level(logging.INFO, logger="tree_seg")
    with open_client(EngineConfig(workers=1), dashboard_address="127.0.0.1:0") as client:
        client.run(lambda: logging.getLogger("tree_seg.engine.tasks").warning("worker warning"))
        time.sleep(1.0)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))

    assert not any(record.name == "tree_seg.engine.tasks" for record in caplog.records)
    assert not any(name.startswith(("forward-logging", "tree_seg-log-level")) for names in plugins.values()
                   for name in names)


def _plugin_names(dask_worker):
    return sorted(dask_worker.plugins)


def test_open_client_address_stops_forwarding_on_exit(gpu_client, caplog):
    caplog.set_level(logging.DEBUG, logger="tree_seg")
    with open_client(EngineConfig(scheduler=gpu_client.scheduler.address)) as client:
        during = list(client.run(_plugin_names).values())[0]

    after = list(gpu_client.run(_plugin_names).values())[0]
    assert "tree_seg-log-level" in during
    assert any(name.startswith("forward-logging-tree_seg") for name in during)
    assert not any(name.startswith(("tree_seg-log-level", "forward-logging")) for name in after)


def _worker_record(message, args=None):
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, args, None)


def _compute_failed(exception_text):
    return _worker_record("Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %r\nTraceback: %r\n",
                          ("backbone_info-1", "executing", "<task>", exception_text, "  File ..."))


def test_worker_plugin_drops_only_expected_errors():
    from tree_seg.engine.cluster import _ExpectedErrorsHidden

    worker_logger = logging.getLogger("distributed.worker")
    heartbeat = _worker_record("Failed to communicate with scheduler during heartbeat.")
    own_error = _compute_failed("WeightsMismatchError('weights file w/model.safetensors could not be read')")
    other_error = _compute_failed("ZeroDivisionError('division by zero')")
    plugin = _ExpectedErrorsHidden()
    plugin.setup(worker=None)
    try:
        assert not worker_logger.filter(heartbeat)
        assert not worker_logger.filter(own_error)
        assert worker_logger.filter(other_error)
        assert worker_logger.filter(_worker_record("Compute Failed"))
    finally:
        plugin.teardown(worker=None)

    assert worker_logger.filter(heartbeat)
    assert worker_logger.filter(own_error)


class _FakeClient:
    def __init__(self, status):
        self.status = status
        self.scheduler = type("Rpc", (), {"address": "tcp://127.0.0.1:8799"})()


class _FakeExecutor:
    def __init__(self, client):
        self.client = client


def test_lost_scheduler_ends_the_batch_in_one_line():
    from tree_seg.engine.pipeline import _cluster_lost
    from tree_seg.exceptions import ClusterLostError

    error = RuntimeError("task-1 cancelled for reason: scheduler-connection-lost.\nClient lost the connection.")

    lost = _cluster_lost(_FakeExecutor(_FakeClient("closed")), Path("a.tif"), error)

    assert isinstance(lost, ClusterLostError)
    assert "\n" not in str(lost)
    assert str(lost).startswith("lost the Dask scheduler at tcp://127.0.0.1:8799 while segmenting a.tif (task-1 "
                                "cancelled for reason: scheduler-connection-lost. Client lost the connection.)")
    assert _cluster_lost(_FakeExecutor(_FakeClient("running")), Path("a.tif"), error) is None
    assert _cluster_lost(_FakeExecutor(None), Path("a.tif"), error) is None


def test_cancelled_task_without_workers_ends_the_batch():
    from distributed.client import FutureCancelledError

    from tree_seg.engine.pipeline import _cluster_lost
    from tree_seg.exceptions import ClusterLostError

    error = FutureCancelledError("seam-windows-2-0-0-6ab7d0ed", None)

    lost = _cluster_lost(_FakeExecutor(_FakeClient("running")), Path("a.tif"), error)

    assert isinstance(lost, ClusterLostError)
    assert str(lost) == (
        "the Dask scheduler at tcp://127.0.0.1:8799 cancelled a task while segmenting a.tif (reason: unknown), as it "
        "does when its workers are gone: check the workers, then run the same command again to resume from the "
        "feature stores"
    )


def test_killed_workers_message_suggests_memory():
    from distributed.scheduler import KilledWorker

    from tree_seg.engine.pipeline import _killed_workers_text

    error = KilledWorker("features-0-1-abc", last_worker=None, allowed_failures=3)

    assert _killed_workers_text(error) == (
        "Dask workers died 4 times while running task 'features-0-1-abc': a worker may have run out of memory, "
        "so lower --chunk-size or give each worker more memory"
    )
    assert _killed_workers_text(ValueError("other")) is None
