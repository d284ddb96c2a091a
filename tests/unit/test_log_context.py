"""Input names in log records (tree_seg.log_context)."""

from __future__ import annotations

import logging
import threading

from tree_seg.log_context import InputTagFilter, current_input, input_context


def _tag_of_record() -> str:
    record = logging.LogRecord("tree_seg.test", logging.INFO, __file__, 1, "message", None, None)
    assert InputTagFilter().filter(record) is True
    return record.input_tag


def test_filter_tags_records_inside_context():
    with input_context("ortho.tif"):
        assert _tag_of_record() == "[ortho.tif] "


def test_filter_leaves_empty_tag_outside_context():
    assert current_input() is None
    assert _tag_of_record() == ""


def test_nested_context_restores_outer_name():
    with input_context("outer.tif"):
        with input_context("inner.tif"):
            assert current_input() == "inner.tif"
        assert current_input() == "outer.tif"
    assert current_input() is None


def test_context_is_reset_after_an_error():
    try:
        with input_context("broken.tif"):
            raise ValueError("failed")
    except ValueError:
        pass

    assert current_input() is None


def test_filter_tags_other_thread_records():
    tags = []
    with input_context("ortho.tif"):
        thread = threading.Thread(target=lambda: tags.append(_tag_of_record()))
        thread.start()
        thread.join()
    thread = threading.Thread(target=lambda: tags.append(_tag_of_record()))
    thread.start()
    thread.join()

    assert tags == ["[ortho.tif] ", ""]
