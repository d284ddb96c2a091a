"""Run the tree_seg engine on a multi-node Slurm cluster through dask-jobqueue.

Each Slurm job started here runs one Dask worker process with one GPU. The
Dask scheduler runs inside this script, on the login or head node where you
start it. The script then segments the inputs you give it, or with
``--serve`` keeps the cluster up until Ctrl-C, so that
``tree-seg segment --scheduler ADDRESS`` can use it from another shell.

Every path (inputs, output folder, feature stores) must be on a file system
that the login node and all compute nodes mount at the same place. Workers
read the raster and write the zarr stores, while this process writes the
label GeoTIFF.

Usage::

    pip install dask-jobqueue
    # Segment two rasters on 4 GPU jobs, then release the jobs:
    python distributed/slurm_cluster.py --jobs 4 --partition gpu --account myproject \\
        --output /shared/out /shared/ortho_a.tif /shared/ortho_b.tif
    # Or keep the cluster up and use the command line from another shell:
    python distributed/slurm_cluster.py --jobs 4 --partition gpu --account myproject --serve
    tree-seg segment --scheduler "$(cat scheduler_address.txt)" /shared/ortho_a.tif -o /shared/out

Written for dask-jobqueue 0.9 (``job_extra_directives``, ``worker_extra_args``
and ``job_script_prologue`` replaced ``job_extra``, ``extra`` and
``env_extra`` in 0.8). It was not run here: there is no Slurm cluster on the
development machine. ``--print-script`` shows the job script Slurm receives.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dask_jobqueue import SLURMCluster
from distributed import Client

from tree_seg.config import SegmentationConfig
from tree_seg.engine import segment_many

logger = logging.getLogger("tree_seg.distributed.slurm")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", type=Path, help="Rasters to segment.")
    parser.add_argument("--output", type=Path, help="Output folder on the shared file system.")
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs, one worker with one GPU each.")
    parser.add_argument("--partition", default="gpu", help="Slurm partition (sbatch -p).")
    parser.add_argument("--account", default=None, help="Slurm account (sbatch -A).")
    parser.add_argument("--cores", type=int, default=8, help="CPU cores per job.")
    parser.add_argument("--memory", default="64GB", help="Memory per job, e.g. 64GB.")
    parser.add_argument("--walltime", default="04:00:00", help="Time limit per job, HH:MM:SS.")
    parser.add_argument("--cpu-only", action="store_true", help="Request no GPU (the backbone runs on CPUs).")
    parser.add_argument("--prologue", action="append", default=[],
                        help="Shell line run before the worker starts, e.g. 'source ~/venvs/tree-seg/bin/activate'; "
                             "repeat for several lines.")
    parser.add_argument("--python", default=None,
                        help="Python that starts each worker [default: 'python' from the PATH that --prologue "
                             "sets up, else this script's interpreter].")
    parser.add_argument("--profile", default="balanced", help="tree_seg preset from profiles.toml.")
    parser.add_argument("--chunk-size", type=int, default=2048, help="Chunk side in input pixels.")
    parser.add_argument("--serve", action="store_true", help="Keep the cluster up until Ctrl-C instead of segmenting.")
    parser.add_argument("--print-script", action="store_true", help="Print the Slurm job script and exit.")
    return parser.parse_args()


def make_cluster(arguments: argparse.Namespace) -> SLURMCluster:
    gpu = not arguments.cpu_only
    return SLURMCluster(
        queue=arguments.partition,
        account=arguments.account,
        cores=arguments.cores,
        processes=1,
        memory=arguments.memory,
        walltime=arguments.walltime,
        job_extra_directives=["--gres=gpu:1"] if gpu else [],
        # The GPU resource makes the engine annotate feature tasks with GPU=1.
        worker_extra_args=["--resources", "GPU=1"] if gpu else [],
        job_script_prologue=arguments.prologue,
        # After a prologue that activates an environment, the worker must use
        # that environment's python, not the submitting machine's path.
        python=arguments.python or ("python" if arguments.prologue else sys.executable),
        log_directory="dask-logs",
        scheduler_options={"dashboard_address": ":8787"},
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = parse_arguments()
    cluster = make_cluster(arguments)
    if arguments.print_script:
        print(cluster.job_script())
        cluster.close()
        return

    with cluster, Client(cluster) as client:
        cluster.scale(jobs=arguments.jobs)
        Path("scheduler_address.txt").write_text(cluster.scheduler_address + "\n", encoding="utf-8")
        logger.info("Scheduler %s, dashboard %s; waiting for the first worker", cluster.scheduler_address,
                    client.dashboard_link)
        client.wait_for_workers(1)

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
