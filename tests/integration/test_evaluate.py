"""tree-seg evaluate and tree-seg sweep on the shared labelled tiles."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from tree_seg.cli.main import app

runner = CliRunner()


@pytest.fixture
def labelled_dataset(shared_data, tmp_path):
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image, mask in [
        ("oam_tcd/tcd_00004_image.tif", "oam_tcd/tcd_00004_mask.tif"),
        ("denmark_crowns/dk41_image.tif", "denmark_crowns/dk41_mask.tif"),
    ]:
        (root / "images" / image.split("/")[1]).symlink_to(shared_data / image)
        (root / "masks" / mask.split("/")[1]).symlink_to(shared_data / mask)
    return root


def test_evaluate_writes_results_for_each_method(labelled_dataset, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, [
        "evaluate", str(labelled_dataset), "-o", str(out), "--backbone", "texture", "--k", "6",
        "--model", "kmeans", "--model", "head-refine", "--model", "kmeans+slic", "-q",
    ])
    assert result.exit_code == 0, result.output

    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["kmeans", "head-refine", "kmeans+slic"]
    for summary in results["methods"].values():
        for field in ("miou_many_to_one", "miou_hungarian", "boundary_f", "pixel_accuracy", "peak_rss_mb"):
            assert 0.0 <= summary[field] <= 1.0 or field == "peak_rss_mb"
        assert summary["k"] == [6, 6]
        assert [record["image"] for record in summary["images"]] == ["dk41", "tcd_00004"]
        assert summary["stage_seconds"]["features"] > 0
        assert summary["configuration"]["backbone"]["name"] == "texture"
        assert "peak_vram_mb" in summary
    assert results["methods"]["head-refine"]["configuration"]["method"] == "head-refine"
    assert results["methods"]["kmeans+slic"]["configuration"]["labels"]["refine"] == "slic"
    assert results["units"] == {"times": "seconds", "memory": "MiB"}

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3
    assert (out / "tcd_00004_comparison.png").is_file()
    assert (out / "dk41_comparison.png").is_file()
    assert "head-refine" in result.output


def test_evaluate_missing_mask_names_file(labelled_dataset, tmp_path):
    (labelled_dataset / "masks" / "dk41_mask.tif").unlink()
    result = runner.invoke(app, ["evaluate", str(labelled_dataset), "-o", str(tmp_path / "eval"),
                                 "--backbone", "texture", "-q"])
    assert result.exit_code == 1
    assert "dk41_image.tif" in result.output


def test_evaluate_rejects_unknown_method(labelled_dataset, tmp_path):
    result = runner.invoke(app, ["evaluate", str(labelled_dataset), "-o", str(tmp_path / "eval"), "--model", "crf"])
    assert result.exit_code == 2
    assert "unknown method 'crf'" in result.output


def test_sweep_reuses_features_for_each_pair(shared_data, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, [
        "sweep", str(shared_data / "denmark_crowns" / "dk41_image.tif"),
        "--mask", str(shared_data / "denmark_crowns" / "dk41_mask.tif"), "-o", str(out),
        "--taus", "auto,0.1", "--alphas", "0,1", "--backbone", "texture", "--k", "5", "-q",
    ])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sweep.json").read_text())
    rows = record["rows"]
    assert [(row["tau"], row["alpha"]) for row in rows] == [("auto", 0.0), ("auto", 1.0), (0.1, 0.0), (0.1, 1.0)]
    assert all(0.0 < row["miou_many_to_one"] <= 1.0 for row in rows)
    assert rows[2]["tau_used"] == 0.1
    # One E-step runs no M-step, so convergence does not apply.
    assert all(row["converged"] is None for row in rows)
    assert record["kmeans"]["k"] == 5
    assert 0.0 < record["kmeans"]["miou_many_to_one"] <= 1.0
    baseline = f"{record['kmeans']['miou_many_to_one']:.3f}"
    assert any(line.split()[0] == "kmeans" and baseline in line for line in result.output.splitlines() if line.strip())
