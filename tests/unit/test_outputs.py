"""Tests of the output naming scheme."""

from __future__ import annotations

import pytest

from tree_seg.exceptions import InvalidInputError
from tree_seg.io.outputs import OutputManager, sanitize_name


def test_output_manager_standard_names(tmp_path):
    outputs = OutputManager(tmp_path, "tcd_00000_image", "kmeans")

    assert outputs.path("labels", "tif") == tmp_path / "tcd_00000_image_kmeans_labels.tif"
    assert outputs.path("metadata", "json").name == "tcd_00000_image_kmeans_metadata.json"
    assert outputs.path("legend", "png").name == "tcd_00000_image_kmeans_legend.png"
    assert outputs.path("overlay", "png").name == "tcd_00000_image_kmeans_overlay.png"
    assert outputs.path("side_by_side", "png").name == "tcd_00000_image_kmeans_side_by_side.png"
    assert outputs.path("elbow", "png").name == "tcd_00000_image_kmeans_elbow.png"


def test_output_manager_method_names_kept(tmp_path):
    refine = OutputManager(tmp_path, "dk41_image", "head-refine")
    snapped = OutputManager(tmp_path, "dk41_image", "kmeans+slic")

    assert refine.name("labels", "tif") == "dk41_image_head-refine_labels.tif"
    assert snapped.name("labels", "tif") == "dk41_image_kmeans+slic_labels.tif"


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("head-refine/slic", "head-refine-slic"),
        ("kmeans\\slic", "kmeans-slic"),
        ("kmeans: slic", "kmeans-slic"),
        ("../kmeans", "kmeans"),
        ("k means*?", "k-means"),
        ("méthode", "m-thode"),
    ],
)
def test_sanitize_name_cases(method, expected):
    assert sanitize_name(method) == expected


def test_output_manager_no_separator_in_any_name(tmp_path):
    outputs = OutputManager(tmp_path, "../site/a\\b", "head-refine/slic")

    path = outputs.path("side/by\\side", "png")

    assert path.parent == tmp_path
    assert "/" not in path.name
    assert "\\" not in path.name
    assert path.name == "site-a-b_head-refine-slic_side-by-side.png"


@pytest.mark.parametrize("stem", ["", "/", "..", "///"])
def test_output_manager_empty_stem_error(tmp_path, stem):
    with pytest.raises(InvalidInputError, match="invalid stem"):
        OutputManager(tmp_path, stem, "kmeans")


def test_output_manager_bad_extension_error(tmp_path):
    outputs = OutputManager(tmp_path, "scene", "kmeans")

    with pytest.raises(InvalidInputError, match="invalid extension 'p/ng'"):
        outputs.path("legend", "p/ng")


def test_output_manager_extension_leading_dot(tmp_path):
    outputs = OutputManager(tmp_path, "scene", "kmeans")

    assert outputs.name("responsibilities", ".nc") == "scene_kmeans_responsibilities.nc"


def test_output_manager_creates_outdir_on_demand(tmp_path):
    outdir = tmp_path / "runs" / "first"
    outputs = OutputManager(outdir, "scene", "kmeans")

    assert not outdir.exists()
    assert outputs.existing() == []

    path = outputs.path("labels", "tif")

    assert outdir.is_dir()
    assert path.parent == outdir


def test_output_manager_existing_lists_own_files(tmp_path):
    outputs = OutputManager(tmp_path, "a", "kmeans")
    for name in [
        "a_kmeans_labels.tif",
        "a_kmeans_metadata.json",
        "a_kmeans_notes.txt",
        "a_kmeans+slic_labels.tif",
        "a_kmeans_kmeans_labels.tif",
        "b_kmeans_labels.tif",
        ".a_kmeans_labels.tif.123-abcd.tmp",
    ]:
        (tmp_path / name).write_text("x")
    custom = outputs.path("scores", "npy")
    custom.write_text("x")

    found = [path.name for path in outputs.existing()]

    assert found == ["a_kmeans_labels.tif", "a_kmeans_metadata.json", "a_kmeans_scores.npy"]


def test_output_manager_remove_existing_keeps_other_files(tmp_path):
    outputs = OutputManager(tmp_path, "a", "kmeans")
    for name in ["a_kmeans_labels.tif", "a_kmeans_elbow.png", "a_kmeans_metadata.json", "a_head-refine_labels.tif",
                 "b_kmeans_labels.tif", "a_kmeans_notes.txt"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "a_kmeans_labels.zarr").mkdir()

    removed = outputs.remove_existing()

    assert sorted(path.name for path in removed) == ["a_kmeans_elbow.png", "a_kmeans_labels.tif",
                                                      "a_kmeans_metadata.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_head-refine_labels.tif", "a_kmeans_labels.zarr",
                                                               "a_kmeans_notes.txt", "b_kmeans_labels.tif"]
