"""The quick-start notebook's code cells run as written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import pytest

from tree_seg.exceptions import BackboneFallbackWarning

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_notebook_quickstart_cells_run(monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(NOTEBOOK.parent)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneFallbackWarning)
        for cell in cells:
            if cell["cell_type"] == "code":
                exec("".join(cell["source"]), namespace)  # noqa: S102
    v2, scores = namespace["v2"], namespace["scores"]
    assert scores.dims == ("cluster", "y", "x")
    assert scores.rio.crs == v2.rio.crs
    assert v2.labels.shape == (2048, 2048)
    assert v2.attrs["k"] == 6
