"""Start the DaskCluster of ``dask-cluster.yaml`` from Python and segment rasters on it.

Uses ``dask_kubernetes.operator.KubeCluster``, which creates the DaskCluster
resource through the Dask Kubernetes operator (installed with Helm, see
``distributed/README.md``) and deletes it when the script ends.

Run it in a pod of the same namespace that mounts the same volume as the
workers (a Jupyter pod, say). This process writes the label GeoTIFFs while
the workers read the rasters and write the zarr stores, so all of them need
the same paths::

    pip install dask-kubernetes
    python distributed/kubernetes/kube_cluster.py --workers 8 \\
        --output /data/output /data/input/orthomosaic.tif

It was not run here: the development machine has no Kubernetes cluster.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml
from dask_kubernetes.operator import KubeCluster
from distributed import Client

from tree_seg.config import SegmentationConfig
from tree_seg.engine import segment_many

logger = logging.getLogger("tree_seg.distributed.kubernetes")

MANIFEST = Path(__file__).with_name("dask-cluster.yaml")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="Rasters on the shared volume.")
    parser.add_argument("--output", type=Path, required=True, help="Output folder on the shared volume.")
    parser.add_argument("--workers", type=int, default=4, help="Worker pods.")
    parser.add_argument("--profile", default="balanced", help="tree_seg preset from profiles.toml.")
    parser.add_argument("--chunk-size", type=int, default=2048, help="Chunk side in input pixels.")
    arguments = parser.parse_args()

    spec = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    spec["spec"]["worker"]["replicas"] = arguments.workers
    config = SegmentationConfig.from_profile(arguments.profile).with_updates(
        {"engine": {"chunk_size": arguments.chunk_size}}
    )
    with KubeCluster(custom_cluster_spec=spec) as cluster, Client(cluster) as client:
        logger.info("DaskCluster %s: scheduler %s, dashboard %s", spec["metadata"]["name"],
                    cluster.scheduler_address, client.dashboard_link)
        client.wait_for_workers(1)
        items = segment_many(arguments.inputs, arguments.output, config, client=client)
    for item in items:
        logger.info("%s %s%s", item.status, item.path, f": {item.error}" if item.error else "")
    if any(item.status != "ok" for item in items):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
