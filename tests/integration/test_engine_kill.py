"""A Dask engine run killed midway resumes to the same labels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcd_00000_image.tif"


def _command(source: Path, outdir: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "tree_seg.cli.main", "segment", str(source), "-o", str(outdir),
        "--engine", "dask", "--scheduler", "synchronous", "--chunk-size", "256", "--feature-store", str(store),
        "--backbone", "texture", "--scale", "1", "--k", "4", "--no-pictures", "--no-progress", "-q",
    ]


def _done_chunks(store: Path) -> np.ndarray | None:
    try:
        return np.asarray(zarr.open_array(store / "done", mode="r")[...])
    except Exception:  # the store is being created by the other process
        return None


@pytest.mark.slow
def test_engine_killed_run_resumes_to_same_labels(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    labels_name = "tcd_00000_image_head-refine_labels.tif"

    reference = subprocess.run(_command(EXAMPLE, tmp_path / "reference", tmp_path / "reference.zarr"),
                               env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    store = tmp_path / "killed.zarr"
    process = subprocess.Popen(_command(EXAMPLE, tmp_path / "killed", store), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    done = None
    while time.monotonic() < deadline and process.poll() is None:
        done = _done_chunks(store)
        if done is not None and 0 < done.sum() < done.size // 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    assert done is not None and 0 < done.sum() < done.size
    assert not (tmp_path / "killed" / labels_name).exists()

    resumed = subprocess.run(_command(EXAMPLE, tmp_path / "killed", store), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    with rasterio.open(tmp_path / "reference" / labels_name) as a, rasterio.open(tmp_path / "killed" / labels_name) as b:
        assert (a.read(1) != b.read(1)).sum() == 0
