"""The tree-seg command line, run in-process with Typer's test runner."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from scipy import ndimage
from typer.testing import CliRunner

from tree_seg.cli.main import app
from tree_seg.exceptions import BackboneFallbackWarning, NoGeoreferenceWarning

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcd_00000_image.tif"

runner = CliRunner()


def _invoke(*args: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneFallbackWarning)
        return runner.invoke(app, list(args))


def test_cli_readme_command_writes_georeferenced_labels(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    labels_path = tmp_path / "tcd_00000_image_head-refine_labels.tif"
    with rasterio.open(EXAMPLE) as src, rasterio.open(labels_path) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform
        assert out.shape == src.shape
        labels = out.read(1)
        image = src.read()
    # Isolated black pixels in shadows stay valid; the collar is the large black region.
    collar = ndimage.binary_opening((image == 0).all(axis=0), iterations=2)
    assert (labels[collar] == 255).all()
    # The JPEG fringe: dark pixels right next to the collar are nodata too.
    assert collar.mean() > 0.2
    assert (labels == 255).mean() > collar.mean()
    metadata = json.loads((tmp_path / "tcd_00000_image_head-refine_metadata.json").read_text())
    assert metadata["backbone"]["name"] == "texture"
    assert metadata["input"]["nodata_rule"]["kind"] == "collar"
    assert metadata["method"] == "head-refine"
    assert metadata["head_refine"]["fell_back"] is False
    # One E-step by default: no M-step ran, so convergence does not apply.
    assert metadata["head_refine"]["m_steps"] == 0
    assert metadata["head_refine"]["converged"] is None
    assert "backbone: texture" in result.output


def test_cli_rejects_v2_options_for_kmeans(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--model", "kmeans", "--tau", "0.1")
    assert result.exit_code == 2
    assert "--tau: these options apply only to --model head-refine" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "4", "--k-range", "2:6"], "--k-range only applies when the elbow rule chooses K, and --k fixes it"),
        (["--k", "4", "--elbow-threshold", "10"], "--elbow-threshold only applies when the elbow rule chooses K"),
        (["--k", "4", "--k-range", "2:6", "--elbow-threshold", "10"],
         "--k-range and --elbow-threshold only apply when the elbow rule chooses K"),
        (["--scale", "0.5", "--target-resolution", "0.2"], "--target-resolution only applies with --scale auto, not --scale 0.5"),
        (["--nodata", "none", "--collar-buffer", "5"], "--collar-buffer only applies to a nodata value"),
        (["--nodata", "none", "--nodata-tolerance", "3"], "--nodata-tolerance only applies to a nodata value"),
        (["--workers", "2", "--scheduler", "synchronous"], "--workers only sizes the local cluster"),
        (["--scheduler", "foo"], "invalid --scheduler foo: expected 'synchronous' or a scheduler address with a port"),
        (["--chunk-size", "32"], "invalid --chunk-size 32"),
        (["--window", "450"], "--window 450 is not a multiple of the patch size 16"),
        pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available here",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
        (["-v", "-q"], "--verbose and --quiet conflict"),
        (["--k-range", "6:2"], "invalid --k-range '6:2'"),
        (["--bands", "1,x"], "invalid --bands '1,x'"),
        (["--model", "head-refine", "--tau", "0"], "tau must be > 0"),
        (["--model", "head-refine", "--alpha", "1.5"], "invalid --alpha 1.5"),
        (["--model", "head-refine", "--iterations", "0"], "invalid --iterations 0"),
        (["--refine", "crf"], "invalid --refine crf"),
        (["--slic-size", "12"], "--slic-size only applies with --refine slic"),
        (["--profile", "fastest"], "unknown profile 'fastest'"),
        (["--nodata", "black"], "invalid --nodata 'black'"),
        (["--backbone", "dinov2_vits14", "--window", "448", "--overlap", "64"], "--overlap 64 is not a multiple of the patch size 14"),
        (["--backbone", "nonsense"], "nonsense"),
    ],
)
def test_cli_rejects_bad_option(tmp_path, args, message):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()).replace("│", "").replace("  ", " ") or message in result.output


def test_cli_window_not_patch_multiple(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--backbone", "texture", "--window", "450")
    assert result.exit_code == 2
    assert "448" in result.output
    assert "backbone:" not in result.output
    assert not list(tmp_path.glob("*_labels.tif"))


def test_cli_batch_reports_failed_input_and_goes_on(tmp_path):
    missing = tmp_path / "missing.tif"
    result = _invoke("segment", str(missing), str(EXAMPLE), "-o", str(tmp_path / "out"), "--no-pictures",
                     "--k", "3", "--backbone", "texture")
    assert result.exit_code == 1
    assert "1 of 2 inputs segmented, 1 failed" in result.output
    assert f"failed  {missing}: " in result.stdout
    assert (tmp_path / "out" / "tcd_00000_image_head-refine_labels.tif").exists()
    assert not (tmp_path / "out" / "missing_head-refine_labels.tif").exists()


def test_cli_help_documents_units_and_defaults():
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for fragment in ["in pixels", "[default: 448]", "in percent", "[default: auto]", "input units"]:
        assert fragment in text


def test_cli_metrics_prints_stage_table(tmp_path):
    source = tmp_path / "small.tif"
    with rasterio.open(EXAMPLE) as src:
        window = rasterio.windows.Window(1024, 1024, 256, 256)
        profile = src.profile | {"height": 256, "width": 256, "transform": src.window_transform(window)}
        profile.pop("photometric", None)
        profile["compress"] = "deflate"
        data = src.read(window=window)
    with rasterio.open(source, "w", **profile) as dst:
        dst.write(data)
    result = _invoke("segment", str(source), "-o", str(tmp_path / "out"), "--metrics", "--k", "3",
                     "--backbone", "texture", "--no-pictures")
    assert result.exit_code == 0, result.output
    assert "time per stage" in result.output
    assert "s per window" in result.output
    metadata = json.loads((tmp_path / "out" / "small_head-refine_metadata.json").read_text())
    assert metadata["profile"]["window_batches"]
    assert np.isfinite(metadata["profile"]["seconds_per_window"])


def test_cli_dask_metrics_table_has_write_pass(tmp_path):
    source = _write_crop(tmp_path / "crop.tif")

    result = _invoke("segment", str(source), "-o", str(tmp_path / "out"), "--scheduler", "synchronous", "--metrics",
                     "--k", "3", "--backbone", "texture", "--model", "kmeans", "--no-pictures", "--no-progress")

    assert result.exit_code == 0, result.output
    table = result.output.split("time per stage", 1)[1]
    assert "write" in table
    assert "peak RSS of this process (Dask workers not counted)" in table
    rows = [line.split() for line in table.splitlines() if line.startswith("  ")]
    seconds = {row[0]: float(row[1]) for row in rows if len(row) == 2 and row[0] != "stage"}
    total = seconds.pop("total")
    assert total == pytest.approx(sum(seconds.values()), abs=0.05)


def test_cli_engine_memory_rejects_dask_options(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--engine", "memory", "--workers", "2")
    assert result.exit_code == 2
    assert "--workers: these options apply only to the Dask engine" in result.output


def _write_crop(path, col_off=900, row_off=900):
    # A 300 x 260 px crop of the example, small enough for a fast Dask run.
    with rasterio.open(EXAMPLE) as src:
        window = rasterio.windows.Window(col_off, row_off, 300, 260)
        profile = src.profile | {"height": 260, "width": 300, "transform": src.window_transform(window)}
        profile.pop("photometric", None)
        profile["compress"] = "deflate"
        data = src.read(window=window)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_cli_dask_engine_synchronous_matches_memory(tmp_path):
    source = _write_crop(tmp_path / "crop.tif")
    common = ["--k", "4", "--backbone", "texture", "--no-pictures", "--no-progress"]
    memory = _invoke("segment", str(source), "-o", str(tmp_path / "memory"), "--engine", "memory", *common)
    dask = _invoke("segment", str(source), "-o", str(tmp_path / "dask"), "--scheduler", "synchronous",
                   "--chunk-size", "128", "--feature-store", str(tmp_path / "store.zarr"), *common)
    assert memory.exit_code == 0, memory.output
    assert dask.exit_code == 0, dask.output
    assert "engine: dask" in dask.output
    assert (tmp_path / "store.zarr").is_dir()
    with rasterio.open(tmp_path / "memory" / "crop_head-refine_labels.tif") as a, \
            rasterio.open(tmp_path / "dask" / "crop_head-refine_labels.tif") as b:
        assert a.crs == b.crs
        assert a.transform == b.transform
        # The engine stores float16 features, which may flip a few ties.
        assert (a.read(1) != b.read(1)).mean() < 0.001


def test_cli_float32_store_matches_memory(tmp_path):
    source = _write_crop(tmp_path / "crop.tif")
    common = ["--backbone", "texture", "--scale", "1", "--k-range", "2:8", "--elbow-threshold", "10", "--no-pictures", "--no-progress"]
    memory = _invoke("segment", str(source), "-o", str(tmp_path / "memory"), "--engine", "memory", *common)
    dask = _invoke("segment", str(source), "-o", str(tmp_path / "dask"), "--scheduler", "synchronous",
                   "--chunk-size", "128", "--feature-dtype", "float32", *common)

    assert memory.exit_code == 0, memory.output
    assert dask.exit_code == 0, dask.output
    records = [json.loads((tmp_path / name / "crop_head-refine_metadata.json").read_text())
               for name in ("memory", "dask")]
    assert records[1]["engine"]["feature_dtype"] == "float32"
    assert records[0]["k_source"] == records[1]["k_source"] == "elbow"
    assert records[0]["k"] == records[1]["k"]
    with rasterio.open(tmp_path / "memory" / "crop_head-refine_labels.tif") as a, \
            rasterio.open(tmp_path / "dask" / "crop_head-refine_labels.tif") as b:
        assert int((a.read(1) != b.read(1)).sum()) == 0


def test_cli_memory_rerun_removes_dask_label_store(tmp_path):
    source = _write_crop(tmp_path / "crop.tif")
    common = ["--k", "3", "--backbone", "texture", "--no-pictures", "--no-progress", "-o", str(tmp_path / "out")]
    dask = _invoke("segment", str(source), "--scheduler", "synchronous", "--chunk-size", "128", *common)
    assert dask.exit_code == 0, dask.output
    assert (tmp_path / "out" / "crop_head-refine_labels.zarr").is_dir()

    memory = _invoke("segment", str(source), "--engine", "memory", *common)

    assert memory.exit_code == 0, memory.output
    assert not (tmp_path / "out" / "crop_head-refine_labels.zarr").exists()
    assert (tmp_path / "out" / "crop_features.zarr").is_dir()
    assert (tmp_path / "out" / "crop_head-refine_labels.tif").is_file()


def test_cli_feature_dtype_rejects_other_dtypes(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path / "out"), "--feature-dtype", "float64")

    assert result.exit_code == 2
    assert "invalid --feature-dtype float64: expected one of 'float16', 'float32'" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_dask_failed_input_error_printed_once(tmp_path, caplog):
    source = _write_crop(tmp_path / "crop.tif")
    common = ["segment", str(source), "-o", str(tmp_path / "out"), "--scheduler", "synchronous", "--chunk-size",
              "128", "--k", "3", "--backbone", "texture", "--model", "kmeans", "--no-pictures", "--no-progress"]
    assert _invoke(*common).exit_code == 0
    caplog.set_level(logging.INFO, logger="tree_seg")

    # The feature store of the first run has another window size.
    result = _invoke(*common, "--window", "224", "--overlap", "64")

    assert result.exit_code == 1
    assert f"failed  {source}: " in result.output
    assert "--window" in result.output
    assert not [record for record in caplog.records if "Failed to segment" in record.getMessage()]


@pytest.mark.parametrize("engine_args", [["--engine", "memory"],
                                         ["--scheduler", "synchronous", "--chunk-size", "128"]])
def test_cli_rerun_removes_outputs_of_earlier_run(tmp_path, engine_args):
    source = _write_crop(tmp_path / "crop.tif")
    out = tmp_path / "out"
    common = ["segment", str(source), "-o", str(out), *engine_args, "--backbone", "texture", "--model", "kmeans",
              "--no-progress"]
    assert _invoke(*common).exit_code == 0
    assert (out / "crop_kmeans_elbow.png").is_file()

    result = _invoke(*common, "--k", "3", "--no-pictures")

    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir() if path.is_file() and path.name.startswith("crop_kmeans_"))
    assert names == ["crop_kmeans_labels.tif", "crop_kmeans_metadata.json"]
    assert json.loads((out / "crop_kmeans_metadata.json").read_text())["k"] == 3


@pytest.mark.parametrize(("engine_args", "logger_prefix"), [
    (["--engine", "memory"], "tree_seg.core"),
    (["--scheduler", "synchronous", "--chunk-size", "128"], "tree_seg.engine"),
])
def test_cli_batch_tags_log_lines_with_input(tmp_path, caplog, engine_args, logger_prefix):
    first = _write_crop(tmp_path / "first.tif")
    second = _write_crop(tmp_path / "second.tif", col_off=400, row_off=500)
    caplog.set_level(logging.INFO, logger="tree_seg")

    result = _invoke("segment", str(first), str(second), "-o", str(tmp_path / "out"), *engine_args, "--k", "3",
                     "--backbone", "texture", "--model", "kmeans", "--no-pictures", "--no-progress")

    assert result.exit_code == 0, result.output
    tags = {getattr(record, "input_tag", None) for record in caplog.records if record.name.startswith(logger_prefix)}
    assert "[first.tif] " in tags
    assert "[second.tif] " in tags


def test_cli_rejects_inputs_with_same_stem(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ortho.tif").write_bytes(EXAMPLE.read_bytes())
    result = _invoke("segment", str(tmp_path / "a" / "ortho.tif"), str(tmp_path / "b" / "ortho.tif"),
                     "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "would write the same outputs (stem 'ortho')" in " ".join(result.output.split())


def test_cli_unmatched_pattern_continues_batch(tmp_path):
    result = _invoke("segment", str(tmp_path / "nothing" / "*.tif"), str(EXAMPLE), "-o", str(tmp_path / "out"),
                     "--no-pictures", "--k", "3", "--backbone", "texture")
    assert result.exit_code == 1
    assert "pattern matches no file" in result.output
    assert (tmp_path / "out" / "tcd_00000_image_head-refine_labels.tif").exists()


def test_cli_missing_input_fails_before_backbone(tmp_path, monkeypatch):
    import tree_seg.models

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone must not load when no input exists")

    monkeypatch.setattr(tree_seg.models, "load_backbone", no_backbone)
    result = _invoke("segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "out"))

    assert result.exit_code == 1
    assert f"failed  {tmp_path / 'missing.tif'}: file not found: check the path" in result.output
    assert "0 of 1 inputs segmented, 1 failed" in result.output


@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_cli_output_file_rejected_early(tmp_path, command):
    # Exit code 2 is a usage error, raised before any raster is read.
    output = tmp_path / "taken"
    output.write_text("not a folder")

    result = _invoke(command, str(EXAMPLE if command == "sweep" else tmp_path), "-o", str(output))

    assert result.exit_code == 2
    assert "is a file; choose another --output" in " ".join(result.output.split())


def test_cli_missing_input_counted_in_summary(tmp_path):
    result = _invoke("segment", str(tmp_path / "missing.tif"), str(EXAMPLE), "-o", str(tmp_path / "out"),
                     "--no-pictures", "--k", "3", "--backbone", "texture")

    assert result.exit_code == 1
    assert "1 of 2 inputs segmented, 1 failed" in result.output
    assert (tmp_path / "out" / "tcd_00000_image_head-refine_labels.tif").exists()


def test_cli_output_under_a_file_fails_before_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = _invoke("segment", str(EXAMPLE), "-o", str(blocker / "out"))
    assert result.exit_code == 2
    assert "cannot create output folder" in " ".join(result.output.split())
    assert "backbone:" not in result.output


def test_cli_elbow_threshold_out_of_range_names_value(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--elbow-threshold", "150")
    assert result.exit_code == 2
    assert "invalid --elbow-threshold 150" in " ".join(result.output.split())


def test_cli_k_text_names_clusters_in_use():
    from tree_seg.cli.batch import _k_text

    assert _k_text(6, 6) == "K=6"
    assert _k_text(8, 5) == "K=8 (5 in use)"


def test_cli_non_raster_fails_before_backbone(tmp_path, monkeypatch):
    import tree_seg.models

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone must not load when no input is readable")

    monkeypatch.setattr(tree_seg.models, "load_backbone", no_backbone)
    fake = tmp_path / "notes.tif"
    fake.write_text("not a raster")

    result = _invoke("segment", str(fake), "-o", str(tmp_path / "out"))

    assert result.exit_code == 1
    assert f"failed  {fake}: not a readable raster" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_band_beyond_count_fails_before_backbone(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path / "out"), "--bands", "1,2,7")

    assert result.exit_code == 1
    assert "--bands asks for band 7 but the raster has 3 bands: use indices in 1..3" in result.output


def test_cli_version_prints_package_version():
    from tree_seg import __version__

    result = _invoke("--version")

    assert result.exit_code == 0
    assert result.output.strip() == f"tree-seg {__version__}"


@pytest.mark.filterwarnings("ignore::tree_seg.exceptions.ElbowRangeWarning")
def test_cli_elbow_threshold_below_one_percent_warns(tmp_path, caplog):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--no-pictures", "--backbone", "texture",
                     "--elbow-threshold", "0.05", "--k-range", "2:4", "--model", "kmeans")

    assert result.exit_code == 0, result.output
    assert "--elbow-threshold 0.05 is in percent, i.e. a 0.05% drop; for a 5% threshold pass 5" in caplog.text


@pytest.mark.parametrize("engine", ["memory", "dask"])
def test_cli_input_without_crs_keeps_transform(tmp_path, engine):
    from rasterio.transform import from_origin

    raster = tmp_path / "nocrs.tif"
    transform = from_origin(1000.0, 2000.0, 0.25, 0.25)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(raster, "w", driver="GTiff", height=192, width=160, count=3, dtype="uint8",
                           transform=transform) as dst:
            dst.write(rng.integers(0, 255, size=(3, 192, 160), dtype=np.uint8))
    options = ["--chunk-size", "128", "--scheduler", "synchronous"] if engine == "dask" else []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoGeoreferenceWarning)
        result = _invoke("segment", str(raster), "-o", str(tmp_path / "out"), "--backbone", "texture", "--model",
                         "kmeans", "--k", "3", "--no-pictures", "--engine", engine, *options)

    assert result.exit_code == 0, result.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "out" / "nocrs_kmeans_labels.tif") as out:
            assert out.crs is None
            assert out.transform == transform
            assert out.shape == (192, 160)


def test_cli_nodata_outside_dtype_fails_input(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path / "out"), "--nodata", "300", "--backbone", "texture")

    assert result.exit_code == 1
    assert f"failed  {EXAMPLE}: invalid --nodata 300: uint8 pixels lie in 0..255" in result.output
    assert not (tmp_path / "out").exists()


def test_console_script_runs_main():
    # main() installs the SIGTERM handler that removes temporary files, so
    # the installed tree-seg command must start there rather than at app.
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="tree-seg")

    assert script.value == "tree_seg.cli.main:main"


def test_sigterm_during_extension_import_exits_143(monkeypatch):
    import os
    import signal

    from tree_seg.cli import main as cli_main

    def import_interrupted_by_sigterm():
        # What CPython does when SIGTERM's SystemExit hits a C extension's
        # initialisation, as seen while matplotlib loaded.
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except SystemExit:
            raise ImportError("initialization failed") from None

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli_main, "app", import_interrupted_by_sigterm)
    monkeypatch.setattr(cli_main, "_terminated_by", None)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_main.main()
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert exit_info.value.code == 128 + signal.SIGTERM


def test_main_reraises_errors_without_sigterm(monkeypatch):
    from tree_seg.cli import main as cli_main

    def broken():
        raise ImportError("missing module")

    monkeypatch.setattr(cli_main, "app", broken)
    monkeypatch.setattr(cli_main, "_terminated_by", None)

    with pytest.raises(ImportError, match="missing module"):
        cli_main.main()


def test_python_dash_m_runs_command_line():
    import subprocess
    import sys

    from tree_seg import __version__

    completed = subprocess.run([sys.executable, "-m", "tree_seg", "--version"], capture_output=True, text=True,
                               timeout=120)

    assert completed.returncode == 0
    assert completed.stdout.strip() == f"tree-seg {__version__}"


def test_cli_sigterm_leaves_no_temporary_files(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import rasterio
    from rasterio.transform import from_origin

    raster = tmp_path / "big.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(raster, "w", driver="GTiff", height=1536, width=1536, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 6000000, 0.2, 0.2)) as dst:
        dst.write(rng.integers(0, 255, size=(3, 1536, 1536), dtype=np.uint8))
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from tree_seg.cli.main import main; main()", "segment", str(raster),
               "-o", str(out), "--backbone", "texture", "--engine", "memory", "-q"]

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The output folder appears once the command runs, after main() has
    # installed its SIGTERM handler; a fixed delay raced with a slow start.
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=120)
    code = process.returncode

    leftovers = sorted(path.name for path in out.glob(".*")) if out.exists() else []
    assert code in (0, 128 + signal.SIGTERM), errors
    assert leftovers == []
    if code != 0:
        assert not (out / "big_head-refine_labels.tif").exists()


def test_cli_interrupt_reports_finished_inputs(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    command = [sys.executable, "-c", "from tree_seg.cli.main import main; main()", "segment", str(EXAMPLE),
               "-o", str(out), "--backbone", "texture", "--engine", "memory", "--no-pictures"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []
    for line in process.stderr:
        log.append(line)
        if "stage features started" in line:
            process.send_signal(signal.SIGINT)
            break
    log.extend(process.stderr)
    code = process.wait(timeout=120)
    text = "".join(log)

    assert code == 130
    assert f"interrupted while segmenting {EXAMPLE}: 0 of 1 inputs finished before" in text
    assert "stage features stopped by an error or interrupt after" in text
    assert "stage features finished" not in text
    assert not (out / "tcd_00000_image_head-refine_labels.tif").exists()


def test_cli_late_interrupt_keeps_exit_code(tmp_path, monkeypatch):
    import os
    import signal

    from tree_seg.cli import batch

    print_summary = batch.print_summary

    def summary_then_interrupt(total, failed):
        print_summary(total, failed)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(batch, "print_summary", summary_then_interrupt)
    handler_before = signal.getsignal(signal.SIGINT)

    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path / "out"), "--backbone", "texture",
                     "--engine", "memory", "--no-pictures")

    assert result.exit_code == 0, result.output
    assert "interrupt ignored: every input has finished" in result.output
    assert (tmp_path / "out" / "tcd_00000_image_head-refine_labels.tif").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_cli_feature_store_file_rejected(tmp_path):
    store = tmp_path / "store"
    store.write_text("not a store")

    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path / "out"), "--feature-store", str(store))

    assert result.exit_code == 2
    assert "is a file: pass a .zarr store or a folder" in " ".join(result.output.split())


def test_check_rasters_leaves_missing_crs_warning_to_reader(tmp_path):
    from PIL import Image
    from rasterio.errors import NotGeoreferencedWarning

    from tree_seg.cli.paths import check_rasters

    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shapes, problems = check_rasters([path], None)

    assert shapes == {path: (20, 30)}
    assert problems == []
    assert not any(issubclass(warning.category, NotGeoreferencedWarning) for warning in caught)


def test_cli_unknown_backbone_lists_auto(tmp_path):
    result = _invoke("segment", str(EXAMPLE), "-o", str(tmp_path), "--backbone", "resnet50")

    assert result.exit_code == 2
    assert "unknown backbone 'resnet50': expected one of auto, texture, dinov3_vits16" in " ".join(result.output.split())


def test_cli_sweep_bad_tau_names_taus(tmp_path):
    result = _invoke("sweep", str(EXAMPLE), "-o", str(tmp_path), "--taus", "auto,0")

    assert result.exit_code == 2
    assert "invalid --taus value '0': tau must be > 0" in " ".join(result.output.split())


def test_cli_sweep_csv_starts_with_baseline(tmp_path):
    source = _write_crop(tmp_path / "crop.tif")
    out = tmp_path / "sweep"

    result = _invoke("sweep", str(source), "-o", str(out), "--taus", "0.05,0.1,0.05", "--alphas", "0.5",
                     "--backbone", "texture", "--k", "3")

    assert result.exit_code == 0, result.output
    with (out / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["tau"], row["alpha"]) for row in rows] == [
        ("kmeans", "", ""), ("head-refine", "0.05", "0.5"), ("head-refine", "0.1", "0.5")]
    assert rows[0]["k"] == "3"
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 2
    assert f"wrote {out / 'sweep.csv'} and {out / 'sweep.json'}" in " ".join(result.output.split())


def test_cli_profiles_lists_settings_as_key_value():
    result = _invoke("profiles")

    assert result.exit_code == 0
    assert "[quick]" in result.output
    assert "  head_refine: iterations=1, blend=guided" in result.output
    assert "  window: window=448 px, overlap=112 px, scale=auto, target_resolution=0.2 m" in result.output


def test_cli_profiles_reads_profiles_file(tmp_path):
    presets = tmp_path / "presets.toml"
    presets.write_text("[small]\nwindow = { window = 224, overlap = 56 }\n")

    listed = _invoke("profiles", "--profiles-file", str(presets))
    missing = _invoke("profiles", "--profiles-file", str(tmp_path / "absent.toml"))

    assert listed.exit_code == 0
    assert listed.output == "[small]\n  window: window=224 px, overlap=56 px\n"
    assert missing.exit_code == 2
    assert "absent.toml not found: check the path" in missing.output


def test_cli_failed_run_leaves_no_empty_folder(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    tiny = tmp_path / "tiny.tif"
    with rasterio.open(tiny, "w", driver="GTiff", height=10, width=10, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(500000, 6000000, 0.1, 0.1)) as dst:
        dst.write(np.full((3, 10, 10), 120, dtype=np.uint8))

    result = _invoke("segment", str(tiny), "-o", str(tmp_path / "out"), "--backbone", "texture")

    assert result.exit_code == 1
    assert result.output.count("clustering needs at least 2") == 1
    assert not (tmp_path / "out").exists()


def test_cli_evaluate_failure_leaves_no_folder(tmp_path):
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    (tmp_path / "dataset" / "masks").mkdir()

    result = _invoke("evaluate", str(tmp_path / "dataset"), "-o", str(tmp_path / "out"), "--backbone", "texture")

    assert result.exit_code == 1
    assert "has no image-mask pairs" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_sweep_failure_leaves_no_folder(tmp_path):
    result = _invoke("sweep", str(EXAMPLE), "-o", str(tmp_path / "out"), "--mask", str(tmp_path), "--backbone",
                     "texture")

    assert result.exit_code == 1
    assert "failed to read mask" in result.output
    assert not (tmp_path / "out").exists()
