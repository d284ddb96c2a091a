"""Run a batch of inputs with one loaded model and print its summary.

:func:`run_batch` runs the in-memory pipeline input by input, and
:func:`run_batch_dask` hands every input to the Dask engine. Both report a
failed input in the summary and go on with the others.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from tree_seg.cli.options import echo_error, flag_names
from tree_seg.config import SegmentationConfig
from tree_seg.exceptions import TreeSegError
from tree_seg.log_context import input_context

__all__ = ["print_summary", "run_batch", "run_batch_dask", "sigint_restored"]

logger = logging.getLogger("tree_seg.cli")


def run_batch(
    paths: list[Path], outdir: Path, config: SegmentationConfig, *, show_metrics: bool, pictures: bool = True,
    failed_before: int = 0,
) -> int:
    """Segment each path with one loaded backbone; return the number of failures.

    ``failed_before`` counts inputs that failed before the batch (missing
    files, empty folders) in the closing summary line.
    """
    from tree_seg.core.segmentation import segment_to_files
    from tree_seg.models import load_backbone

    try:
        backbone = load_backbone(config.backbone)
    except TreeSegError as error:
        echo_error(error)
        return len(paths)

    rows: list[tuple[str, str, str]] = []
    for path in paths:
        try:
            with input_context(path.name):
                run, files = segment_to_files(path, outdir, config, backbone=backbone, pictures=pictures)
        except KeyboardInterrupt:
            finished = sum(1 for _, status, _ in rows if status == "ok")
            typer.echo(f"\ninterrupted while segmenting {path}: {finished} of {len(paths)} inputs finished before, "
                       "with complete outputs", err=True)
            raise typer.Exit(code=130) from None
        except (TreeSegError, OSError) as error:
            # The summary at the end prints the error, so the log keeps it at debug level.
            logger.debug("failed on %s: %s", path, error)
            rows.append((str(path), "failed", flag_names(str(error))))
            continue
        profile = run.profile.to_dict()
        k_text = _k_text(run.model.k, run.clusters_used)
        rows.append((str(path), "ok", f"{k_text}, {profile['total_seconds']:.1f} s -> {files['labels']}"))
        if show_metrics:
            _print_stage_table(path.name, profile)

    _all_inputs_finished()
    typer.echo(f"\nbackbone: {backbone.info()['name']}")
    for path_text, status, detail in rows:
        typer.echo(f"{status:<7} {path_text}: {detail}")
    failed = sum(1 for _, status, _ in rows if status != "ok")
    print_summary(len(rows) + failed_before, failed + failed_before)
    return failed


def run_batch_dask(
    paths: list[Path], outdir: Path, config: SegmentationConfig, *, show_metrics: bool, pictures: bool, progress: bool,
    failed_before: int = 0,
) -> int:
    """Segment each path with the Dask engine on one cluster; return the number of failures.

    ``failed_before`` is counted in the summary line as in :func:`run_batch`.
    """
    from tree_seg.engine import segment_many

    if not progress:
        # Worker processes inherit the environment, so this also hides the
        # weight-loading bar that each worker prints when its backbone loads.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    # An interrupt while the local cluster starts its processes can make
    # multiprocessing's resource tracker warn about leaked semaphores. The
    # tracker is a process of its own, so it reads its filters from here.
    filters = [os.environ.get("PYTHONWARNINGS"), "ignore:resource_tracker:UserWarning"]
    os.environ["PYTHONWARNINGS"] = ",".join(f for f in filters if f)

    # Importing distributed installs its own INFO-level handler, so quieten it
    # after the import rather than in _setup_logging.
    import distributed  # noqa: F401

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # The client logs a lost scheduler with tracebacks, and the engine
        # then reports it in one line.
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    try:
        with _failures_left_to_summary():
            items = segment_many(paths, outdir, config, pictures=pictures, progress=progress)
    except TreeSegError as error:
        echo_error(error)
        return len(paths)
    except KeyboardInterrupt:
        # The Dask client's cancelled tasks are collected while the process
        # exits, and asyncio would log each as an unretrieved exception.
        # Zarr calls that the interrupt cut short leave coroutines that
        # Python warns about when it collects them.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        typer.echo("\ninterrupted: inputs with a _labels.tif are complete; run the same command again to resume "
                   "the others from their feature stores", err=True)
        raise typer.Exit(code=130) from None
    _all_inputs_finished()
    for item in items:
        if item.status == "ok" and show_metrics:
            _print_stage_table(item.path.name, _engine_profile(item.result),
                               rss_label="peak RSS of this process (Dask workers not counted)")
    typer.echo("\nengine: dask")
    for item in items:
        if item.status == "ok":
            seconds = sum(item.result.timings.values())
            k_text = _k_text(item.result.k, item.result.metadata["clusters_used"])
            detail = f"{k_text}, {seconds:.1f} s -> {item.result.labels_path}"
        else:
            detail = flag_names(item.error or "")
        typer.echo(f"{item.status:<7} {item.path}: {detail}")
    failed = sum(1 for item in items if item.status != "ok")
    print_summary(len(items) + failed_before, failed + failed_before)
    return failed


def _drop_summarised_failure(record: logging.LogRecord) -> bool:
    # The summary prints each failed input with its error. A failure with a
    # traceback (an unexpected error) still shows it in the log.
    return not (getattr(record, "input_failure", False) and not record.exc_info)


@contextmanager
def _failures_left_to_summary() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_drop_summarised_failure)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_drop_summarised_failure)


def _engine_profile(result: Any) -> dict[str, Any]:
    # The metadata is written before the label raster, so its profile lacks
    # the write pass; the result's timings have every pass.
    profile = dict(result.metadata.get("profile") or {})
    profile["stage_seconds"] = dict(result.timings)
    profile["total_seconds"] = sum(result.timings.values())
    profile.setdefault("peak_rss_mb", float("nan"))
    return profile


def _print_stage_table(name: str, profile: dict[str, Any], rss_label: str = "peak RSS") -> None:
    typer.echo(f"\n{name}: time per stage")
    typer.echo(f"  {'stage':<16}{'seconds':>10}")
    for stage, seconds in profile["stage_seconds"].items():
        typer.echo(f"  {stage:<16}{seconds:>10.2f}")
    typer.echo(f"  {'total':<16}{profile['total_seconds']:>10.2f}")
    typer.echo(f"  {rss_label} {profile['peak_rss_mb']:.0f} MiB")
    if profile.get("peak_vram_mb") is not None:
        typer.echo(f"  peak VRAM {profile['peak_vram_mb']:.0f} MiB")
    if profile.get("seconds_per_window") is not None:
        typer.echo(f"  {profile['seconds_per_window']:.3f} s per window")


def _k_text(k: int, used: int) -> str:
    return f"K={k}" if used == k else f"K={k} ({used} in use)"


def print_summary(total: int, failed: int) -> None:
    if total > 1 or failed:
        typer.echo(f"{total - failed} of {total} inputs segmented, {failed} failed")


@contextmanager
def sigint_restored() -> Iterator[None]:
    # Puts back the SIGINT handler that _all_inputs_finished replaces, so a
    # caller that runs the command in-process keeps its own.
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def _all_inputs_finished() -> None:
    """Make SIGINT print a note instead of interrupting, once every input has an outcome.

    The exit code then reports the inputs (0 or 1) rather than 130, and the
    shutdown, which may close a Dask cluster, runs to its end.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _note_late_interrupt)


def _note_late_interrupt(signum: int, frame: Any) -> None:
    typer.echo("\ninterrupt ignored: every input has finished, and the run is shutting down", err=True)
