"""Run the tree_seg engine on every GPU of one machine with dask-cuda.

``LocalCUDACluster`` starts one worker process per visible GPU and pins each
to its own device through ``CUDA_VISIBLE_DEVICES``, so each worker loads the
backbone once on its GPU. The plain ``LocalCluster`` that tree_seg starts by
default cannot pin workers to devices, which is why several GPUs need this.

Segment rasters directly::

    pip install dask-cuda
    python distributed/local_cuda_cluster.py --output out/ ortho_a.tif ortho_b.tif

or serve the cluster until Ctrl-C and use the command line from another shell::

    python distributed/local_cuda_cluster.py --serve
    tree-seg segment --scheduler tcp://127.0.0.1:8786 ortho_a.tif -o out/

Every worker is asked to advertise ``GPU=1``, so that the engine annotates
feature tasks with that resource (one backbone forward pass per GPU at a
time). NOTE: that LocalCUDACluster forwards ``resources`` to its workers, as
LocalCluster does with extra keyword arguments, is assumed, not checked: the
development machine has no GPU and no dask-cuda, so this script was never
run. Without the resource the engine still works, because every worker of
this cluster has a GPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from dask_cuda import LocalCUDACluster
from distributed import Client

from tree_seg.config import SegmentationConfig
from tree_seg.engine import segment_many

logger = logging.getLogger("tree_seg.distributed.cuda")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", type=Path, help="Rasters to segment.")
    parser.add_argument("--output", type=Path, help="Output folder.")
    parser.add_argument("--devices", default=None, help="GPUs to use, e.g. 0,1,2,3; default: all visible.")
    parser.add_argument("--profile", default="balanced", help="tree_seg preset from profiles.toml.")
    parser.add_argument("--chunk-size", type=int, default=2048, help="Chunk side in input pixels.")
    parser.add_argument("--serve", action="store_true", help="Keep the cluster up until Ctrl-C instead of segmenting.")
    arguments = parser.parse_args()

    cluster = LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=arguments.devices,
        threads_per_worker=1,
        host="127.0.0.1",
        scheduler_port=8786,
        dashboard_address="127.0.0.1:8787",
        resources={"GPU": 1},
    )
    with cluster, Client(cluster) as client:
        logger.info("%d GPU workers; scheduler %s, dashboard %s", len(cluster.workers), cluster.scheduler_address,
                    client.dashboard_link)
        if arguments.serve:
            logger.info("Serving; run: tree-seg segment --scheduler %s INPUT -o OUTDIR", cluster.scheduler_address)
            try:
                while True:
                    time.sleep(60)
            except KeyboardInterrupt:
                logger.info("Stopping the cluster")
            return

        if not arguments.inputs or arguments.output is None:
            raise SystemExit("give input rasters and --output, or --serve")
        config = SegmentationConfig.from_profile(arguments.profile).with_updates(
            {"engine": {"chunk_size": arguments.chunk_size}}
        )
        items = segment_many(arguments.inputs, arguments.output, config, client=client)
    for item in items:
        logger.info("%s %s%s", item.status, item.path, f": {item.error}" if item.error else "")
    if any(item.status != "ok" for item in items):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
