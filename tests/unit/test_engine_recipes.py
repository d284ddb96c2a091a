"""Offline checks of the cluster recipes in distributed/: scripts compile, manifests parse."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "distributed"
SCRIPTS = sorted(RECIPES.rglob("*.py"))
MANIFESTS = sorted(RECIPES.rglob("*.yaml"))


def test_recipes_present():
    names = {path.relative_to(RECIPES).as_posix() for path in SCRIPTS + MANIFESTS}
    assert names == {"slurm_cluster.py", "local_cuda_cluster.py", "kubernetes/kube_cluster.py",
                     "kubernetes/dask-cluster.yaml", "kubernetes/segment-job.yaml"}


def test_recipes_not_a_package():
    # A distributed/__init__.py would shadow Dask's own `distributed` package.
    assert not list(RECIPES.rglob("__init__.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_recipe_script_compiles(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def _load(path):
    yaml = pytest.importorskip("yaml")
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def test_dask_cluster_manifest_shape():
    (cluster,) = _load(RECIPES / "kubernetes" / "dask-cluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["kind"] == "DaskCluster"
    assert cluster["metadata"]["name"] == "tree-seg"

    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["dask", "worker"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    scheduler = cluster["spec"]["scheduler"]
    assert scheduler["spec"]["containers"][0]["args"] == ["dask", "scheduler"]
    ports = {port["name"]: port["port"] for port in scheduler["service"]["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == "tree-seg"


def test_segment_job_targets_scheduler_service():
    (job,) = _load(RECIPES / "kubernetes" / "segment-job.yaml")
    assert job["kind"] == "Job"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["tree-seg", "segment"]
    assert command[command.index("--scheduler") + 1] == "tcp://tree-seg-scheduler:8786"


def test_readme_runs_cli_against_each_recipe():
    readme = (RECIPES / "README.md").read_text(encoding="utf-8")
    for script in SCRIPTS:
        assert script.name in readme
    assert readme.count("tree-seg segment --scheduler") >= 4


def _load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), RECIPES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("extra", "python"), [
    (["--prologue", "source ~/venvs/tree-seg/bin/activate"], "python"),
    (["--prologue", "module load conda", "--python", "/opt/env/bin/python"], "/opt/env/bin/python"),
])
def test_slurm_recipe_worker_python_follows_prologue(monkeypatch, extra, python):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed")
    slurm = _load_script("slurm_cluster.py")
    monkeypatch.setattr("sys.argv", ["slurm_cluster.py", "--print-script", *extra])

    cluster = slurm.make_cluster(slurm.parse_arguments())
    try:
        script = cluster.job_script()
    finally:
        cluster.close()

    worker_line = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert worker_line.split()[0] == python
    assert extra[1] in script
