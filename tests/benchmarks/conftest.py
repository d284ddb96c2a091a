"""Shared helpers of the benchmarks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest


def _best_time(function: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    # Other processes on a shared machine only ever make a run slower, so
    # the fastest of a few runs is the steadiest estimate.
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


@pytest.fixture(scope="session")
def best_time() -> Callable[..., tuple[float, Any]]:
    """Return ``best_time(function, repeats=3)``: the shortest run in seconds, and the last result."""
    return _best_time
