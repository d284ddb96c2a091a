"""Configuration messages rewritten with the command line's option names."""

from __future__ import annotations

import pytest

from tree_seg.cli.options import flag_names


@pytest.mark.parametrize(("message", "expected"), [
    ("invalid alpha=2.0: expected a value in [0.0, 1.0]", "invalid --alpha 2.0: expected a value in [0.0, 1.0]"),
    ("invalid chunk_size=10: expected a value in [64, 65536]", "invalid --chunk-size 10: expected a value in [64, 65536]"),
    ("invalid blend='x': expected one of 'neighbour', 'guided'", "invalid --blend x: expected one of 'neighbour', 'guided'"),
    ("invalid overlap=112 (the default) for window=100", "invalid --overlap 112 (the default) for --window 100"),
    ("invalid k_min=1: expected K >= 2", "invalid --k-range 1: expected K >= 2"),
    ("invalid device='cuda': use device='cpu'", "invalid --device cuda: use --device cpu"),
    ("invalid method='foo': expected kmeans", "invalid --model foo: expected kmeans"),
    ("pass --weights DIR / BackboneConfig(weights=DIR)", "pass --weights DIR / BackboneConfig(weights=DIR)"),
    ("invalid scheduler='': expected 'synchronous'", "invalid --scheduler '': expected 'synchronous'"),
    ("invalid scheduler='synchronous ': expected", "invalid --scheduler 'synchronous ': expected"),
])
def test_flag_names_rewrites_fields(message, expected):
    assert flag_names(message) == expected


def test_flag_names_rewrites_settings_keys():
    message = "written with other settings (window.scale: stored 0.5, now 0.4; read.collar_buffer: stored 3, now 5)"

    assert flag_names(message) == "written with other settings (--scale: stored 0.5, now 0.4; --collar-buffer: stored 3, now 5)"


def test_flag_names_leaves_other_words():
    message = "invalid bulk=3 and chunk size 10; k is fine"

    assert flag_names(message) == message
