"""The Dask engine on process clusters: worker counts, a real tile, GPU routing (slow)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import rasterio
import torch
from distributed import Client, Nanny, Scheduler, SpecCluster
from rasterio.windows import Window

from tree_seg.config import EngineConfig, SegmentationConfig
from tree_seg.engine import open_client, segment_many, segment_raster
from tree_seg.engine.worker import backbone_load_count

pytestmark = pytest.mark.slow

LOOPBACK_DASHBOARD = "127.0.0.1:0"


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Workers run torch with one thread (the nanny sets OMP_NUM_THREADS=1);
    # the in-process reference runs get the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(method, chunk_size, **engine):
    return SegmentationConfig().with_updates({
        "method": method,
        "backbone": {"name": "texture"},
        "window": {"window": 128, "overlap": 32, "scale": 1.0},
        "cluster": {"k": 4},
        "engine": {"chunk_size": chunk_size, "scheduler": "synchronous", **engine},
    })


def _labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture
def tile_crop(shared_data, tmp_path):
    """Write a 512 x 640 crop of a real OAM-TCD tile, collar included, as a georeferenced GeoTIFF."""
    window = Window(1200, 0, 640, 512)
    with rasterio.open(shared_data / "oam_tcd" / "tcd_00004_image.tif") as src:
        data = src.read(window=window)
        profile = {**src.profile, "height": 512, "width": 640, "transform": src.window_transform(window),
                   "tiled": True, "blockxsize": 256, "blockysize": 256}
    path = tmp_path / "crop.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_local_workers_ignore_terminal_interrupt():
    # Ctrl-C reaches the whole process group; only this process should act on it.
    with open_client(EngineConfig(workers=2), dashboard_address=LOOPBACK_DASHBOARD) as client:
        ignored = client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)

    assert list(ignored.values()) == [True, True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_local_workers_keep_cancelled_task_warnings_quiet():
    import logging

    with open_client(EngineConfig(workers=1), dashboard_address=LOOPBACK_DASHBOARD) as client:
        levels = client.run(lambda: logging.getLogger("distributed.worker.state_machine").level)

    assert list(levels.values()) == [logging.ERROR]


@pytest.mark.parametrize("method", ["kmeans", "head-refine"])
def test_engine_worker_counts_identical(tile_crop, tmp_path, method):
    config = _config(method, 256)
    reference = _labels(segment_raster(tile_crop, tmp_path / "sync", config, pictures=False,
                                       progress=False).labels_path)

    for workers in (1, 2):
        engine = EngineConfig(chunk_size=256, workers=workers)
        with open_client(engine, dashboard_address=LOOPBACK_DASHBOARD) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == workers
            result = segment_raster(tile_crop, tmp_path / str(workers), config, client=client, pictures=False,
                                    progress=False)
        differing = int((_labels(result.labels_path) != reference).sum())
        print(f"{method}, {workers} worker(s): {differing} pixels differ from the in-process run")
        assert differing == 0


def test_engine_two_workers_real_tile(shared_data, tmp_path):
    tile = shared_data / "oam_tcd" / "tcd_00004_image.tif"
    engine = EngineConfig(chunk_size=1024, workers=2)
    with open_client(engine, dashboard_address=LOOPBACK_DASHBOARD) as client:
        items = []
        for method in ("kmeans", "head-refine"):
            config = SegmentationConfig().with_updates({
                "method": method, "backbone": {"name": "texture"}, "cluster": {"k": 5},
                "engine": {"chunk_size": 1024},
            })
            items += segment_many([tile], tmp_path, config, client=client, pictures=False, progress=False)
        loads = client.run(backbone_load_count)

    assert [item.status for item in items] == ["ok", "ok"]
    # Each worker that ran a feature task loaded the backbone exactly once.
    print(f"backbone loads per worker: {sorted(loads.values())}")
    assert max(loads.values()) == 1
    assert sum(loads.values()) >= 1
    kmeans, head_refine = (_labels(item.result.labels_path) for item in items)
    for labels in (kmeans, head_refine):
        assert labels.shape == (2048, 2048)
        # About 73% of the tile is a white collar with no nodata tag, found by the automatic rule.
        assert 0.6 < (labels == 255).mean() < 0.8
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 255}
    assert items[1].result.metadata["head_refine"]["fell_back"] is False
    assert items[1].result.metadata["engine"]["feature_chunks_computed"] == 0


def test_engine_gpu_resource_routes_features(tile_crop, tmp_path):
    # Two worker processes, of which only one advertises a GPU: the
    # backbone must load there and nowhere else.
    workers = {
        "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, "host": "127.0.0.1"}},
        "cpu": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1"}},
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": LOOPBACK_DASHBOARD}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        segment_raster(tile_crop, tmp_path, _config("kmeans", 128), client=client, pictures=False, progress=False)
        loads = client.run(backbone_load_count)
        resources = {address: info["resources"] for address, info in
                     client.scheduler_info(n_workers=-1)["workers"].items()}

    for address, count in loads.items():
        assert count == (1 if resources[address].get("GPU") else 0)


@pytest.mark.slow
def test_unguarded_script_gets_main_guard_hint(tmp_path):
    # Dask starts worker processes by importing the main module, so a script
    # that starts the engine at import time fails. The error must name the cause.
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "tcd_00000_image.tif"
    script = tmp_path / "run.py"
    script.write_text(
        "import warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from tree_seg import SegmentationConfig\n"
        "from tree_seg.engine import segment_raster\n"
        "config = SegmentationConfig().with_updates({'backbone': {'name': 'texture'}, 'engine': {'workers': 1}})\n"
        f"segment_raster({str(example)!r}, {str(tmp_path / 'out')!r}, config, pictures=False)\n"
    )

    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)

    assert completed.returncode == 1
    assert "ClusterStartError: failed to start the local Dask cluster" in completed.stderr
    assert 'if __name__ == "__main__":' in completed.stderr


def test_two_workers_print_backbone_fallback_once(tile_crop, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "tree_seg", "segment", str(tile_crop), "-o", str(tmp_path / "out"),
               "--workers", "2", "--chunk-size", "256", "--k", "3", "--model", "kmeans", "--no-pictures", "-q"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("DINOv3 weights not found") == 1, completed.stderr
