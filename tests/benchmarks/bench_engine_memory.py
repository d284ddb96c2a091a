"""Peak memory per Dask worker does not grow with the raster size.

Two synthetic orthomosaics are tiled from real OAM-TCD imagery, 4096 and
8192 px square, and each is segmented (V1.5, then V2 with the guided blend)
on a fresh two-worker ``LocalCluster`` in 1024 px chunks. Each worker
reports the peak resident set size of its process (``ru_maxrss``), which
covers both runs. Run with::

    python -m pytest tests/benchmarks/bench_engine_memory.py -m benchmark -s
"""

from __future__ import annotations

import resource

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from tree_seg.config import EngineConfig, SegmentationConfig
from tree_seg.engine import open_client, segment_raster

pytestmark = [pytest.mark.benchmark, pytest.mark.shared_data]

TILE = 1024
CHUNK_SIZE = 1024
MAX_GROWTH = 1.20


def _worker_peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _source_tiles(shared_data):
    """Return 1024 x 1024 crops of real imagery that are mostly inside the flight footprint."""
    crops = []
    for name, windows in (("tcd_00004_image.tif", [(1024, 0), (1024, 512)]),
                          ("tcd_00000_image.tif", [(0, 1024), (1024, 1024)])):
        with rasterio.open(shared_data / "oam_tcd" / name) as src:
            crops += [src.read(window=Window(col, row, TILE, TILE)) for col, row in windows]
    return crops


def write_mosaic(path, crops, tiles_per_side):
    """Write a tiles_per_side x tiles_per_side mosaic of the crops, flipped in turn so no tile repeats exactly."""
    side = tiles_per_side * TILE
    profile = {"driver": "GTiff", "height": side, "width": side, "count": 3, "dtype": "uint8", "crs": "EPSG:3395",
               "transform": from_origin(1009956.8, 6161233.2, 0.1, 0.1), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for index in range(tiles_per_side * tiles_per_side):
            row, col = divmod(index, tiles_per_side)
            crop = crops[index % len(crops)]
            if (index // len(crops)) % 2:
                crop = crop[:, ::-1, :]
            dst.write(np.ascontiguousarray(crop), window=Window(col * TILE, row * TILE, TILE, TILE))
    return path


def _peak_per_worker(source, outdir):
    engine = EngineConfig(chunk_size=CHUNK_SIZE, workers=2)
    with open_client(engine, dashboard_address="127.0.0.1:0") as client:
        for method in ("kmeans", "head-refine"):
            config = SegmentationConfig().with_updates({
                "method": method,
                "backbone": {"name": "texture"},
                "window": {"scale": 1.0},
                "cluster": {"k": 6},
                "engine": {"chunk_size": CHUNK_SIZE},
            })
            segment_raster(source, outdir, config, client=client, pictures=False, progress=False)
        return client.run(_worker_peak_rss_mib)


def test_engine_worker_memory_flat_in_raster_size(shared_data, tmp_path):
    crops = _source_tiles(shared_data)
    # 16 and 64 chunks of 1024 px. With only two chunks per worker (a 2048 px
    # raster) the peak was still growing while glibc's heaps warmed up.
    small = write_mosaic(tmp_path / "mosaic_small.tif", crops, 4)
    large = write_mosaic(tmp_path / "mosaic_large.tif", crops, 8)

    small_peaks = _peak_per_worker(small, tmp_path / "small")
    large_peaks = _peak_per_worker(large, tmp_path / "large")

    small_peak, large_peak = max(small_peaks.values()), max(large_peaks.values())
    print(f"\npeak RSS per worker, {4 * TILE} x {4 * TILE} px: "
          f"{', '.join(f'{v:.0f}' for v in small_peaks.values())} MiB")
    print(f"peak RSS per worker, {8 * TILE} x {8 * TILE} px (4x the area): "
          f"{', '.join(f'{v:.0f}' for v in large_peaks.values())} MiB")
    print(f"growth of the largest worker peak: {large_peak / small_peak:.3f}x (limit {MAX_GROWTH}x)")
    assert large_peak <= MAX_GROWTH * small_peak
