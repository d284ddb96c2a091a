"""Log levels that the command line's -v and -q set."""

from __future__ import annotations

import logging

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
