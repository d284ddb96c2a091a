"""Log levels that the command line's -v and -q set."""

from __future__ import annotations

import logging
import os

import pytest

from tree_seg.cli.main import _setup_logging

NAMES = ["tree_seg", "distributed", "rasterio"]


@pytest.fixture(autouse=True)
def _restore_levels():
    saved = {name: logging.getLogger(name).level for name in NAMES}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("verbose", "quiet", "tree_seg_level", "library_level"), [
    (0, False, logging.NOTSET, logging.WARNING),
    (0, True, logging.NOTSET, logging.WARNING),
    (1, False, logging.DEBUG, logging.WARNING),
    (2, False, logging.DEBUG, logging.NOTSET),
])
def test_setup_logging_verbosity_levels(verbose, quiet, tree_seg_level, library_level):
    for name in NAMES:
        logging.getLogger(name).setLevel(logging.NOTSET)

    _setup_logging(verbose, quiet)

    assert logging.getLogger("tree_seg").level == tree_seg_level
    assert logging.getLogger("distributed").level == library_level
    assert logging.getLogger("rasterio").level == library_level


@pytest.mark.parametrize("command", ["segment", "evaluate", "sweep"])
def test_no_progress_hides_weight_loading_bars(command, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from tree_seg.cli.main import app

    # setenv first, so that the variable the command sets is removed afterwards.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    # The command then fails on the missing input, after logging is set up.
    result = CliRunner().invoke(app, [command, str(tmp_path / "missing"), "-o", str(tmp_path / "out"),
                                      "--no-progress"])

    assert result.exit_code != 0
    assert "No such option" not in result.output
    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"


def test_progress_leaves_weight_loading_bars(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from tree_seg.cli.main import app

    # setenv first, so that the variable the command sets is removed afterwards.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    CliRunner().invoke(app, ["evaluate", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])

    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
