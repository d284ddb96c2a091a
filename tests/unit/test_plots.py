import numpy as np
from PIL import Image

from tree_seg.visualization.plots import _legend_handles, boundary_mask, plot_elbow, plot_legend


def test_legend_lists_only_present_labels():
    labels = np.array([[0, 2], [255, 2]], dtype=np.uint8)
    names = [handle.get_label() for handle in _legend_handles(3, np.unique(labels))]
    assert names == ["cluster 0", "cluster 2", "nodata (255)"]


def test_boundary_mask_marks_both_sides():
    labels = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    assert boundary_mask(labels).tolist() == [[False, True, True, False]]


def test_plot_elbow_writes_png(tmp_path):
    path = plot_elbow([2, 3, 4, 5, 6], [10.0, 6.0, 3.0, 1.0, 0.95], 5, tmp_path / "elbow.png", threshold=0.05)
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 500
    assert [p.name for p in tmp_path.iterdir()] == ["elbow.png"]


def test_plot_legend_writes_png(tmp_path):
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[:, 30:] = 1
    path = plot_legend(labels, 2, tmp_path / "legend.png", title="test")
    with Image.open(path) as image:
        assert image.format == "PNG"
