"""Wall time per stage, peak memory and optional per-window timings."""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = ["RunProfile", "peak_rss_mb", "peak_vram_mb"]

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Return the peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024
    return peak / divisor


def current_rss_mb() -> float:
    """Return the current resident set size of this process, in MiB."""
    return psutil.Process().memory_info().rss / (1024 * 1024)


def peak_vram_mb() -> float | None:
    """Return the peak CUDA memory allocated by torch in MiB, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / (1024 * 1024)


@dataclass
class RunProfile:
    """Timings and memory of one run.

    Stage times are always recorded. With ``detailed=True`` the feature stage
    also records the time of every batch of windows.

    Attributes
    ----------
    stages : dict of str to float
        Wall time of each stage in seconds, in the order the stages ran.
    stage_peak_rss_mb : dict of str to float
        Process peak RSS in MiB at the end of each stage (the peak so far,
        so a stage's own peak is at most this value).
    window_batches : list of dict
        ``{"windows": n, "seconds": t}`` per batch, only when detailed.
    """

    detailed: bool = False
    stages: dict[str, float] = field(default_factory=dict)
    stage_peak_rss_mb: dict[str, float] = field(default_factory=dict)
    window_batches: list[dict[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` and log its duration."""
        start = time.perf_counter()
        outcome = "stopped by an error or interrupt after"
        try:
            # Inside the try, so that an interrupt while this line is written
            # still logs the stage as stopped.
            logger.info("stage %s started", name)
            yield
            outcome = "finished in"
        finally:
            elapsed = time.perf_counter() - start
            self.stages[name] = self.stages.get(name, 0.0) + elapsed
            self.stage_peak_rss_mb[name] = peak_rss_mb()
            logger.info("stage %s %s %.2f s", name, outcome, elapsed)

    def record_batch(self, n_windows: int, seconds: float) -> None:
        """Record one batch of windows when detailed profiling is on."""
        if self.detailed:
            self.window_batches.append({"windows": n_windows, "seconds": seconds})

    @property
    def total_seconds(self) -> float:
        """Sum of the stage times in seconds."""
        return sum(self.stages.values())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready record: seconds, MiB, and batch timings when detailed."""
        record: dict[str, Any] = {
            "stage_seconds": dict(self.stages),
            "stage_peak_rss_mb": dict(self.stage_peak_rss_mb),
            "total_seconds": self.total_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "peak_vram_mb": peak_vram_mb(),
        }
        if self.detailed:
            record["window_batches"] = list(self.window_batches)
            n_windows = sum(b["windows"] for b in self.window_batches)
            seconds = sum(b["seconds"] for b in self.window_batches)
            record["seconds_per_window"] = seconds / n_windows if n_windows else None
        return record
