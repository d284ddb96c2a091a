"""Input paths and the output folder of the command line.

Inputs expand from files, folders and glob patterns, and their headers are
checked before any model loads, so a bad input fails in milliseconds. The
output folder is created and checked before any work, and removed again
when a run fails before writing to it.
"""

from __future__ import annotations

import glob
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

__all__ = ["RASTER_SUFFIXES", "check_output_folder", "check_output_names", "check_rasters", "expand_inputs",
           "output_folder"]


RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".png", ".jpg", ".jpeg", ".jp2", ".img"}


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their rasters, sorted) and glob patterns into paths.

    Returns
    -------
    paths : list of Path
        Inputs in order, each file once.
    problems : list of (str, str)
        Missing files, folders without rasters and patterns that match
        nothing, with the reason. The batch reports them as failed inputs,
        before the backbone loads, and goes on.
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                problems.append((item, f"folder contains no raster file ({', '.join(sorted(RASTER_SUFFIXES))})"))
            paths.extend(found)
        elif any(char in item for char in "*?["):
            found = sorted(Path(p) for p in glob.glob(item))
            if not found:
                problems.append((item, "pattern matches no file"))
            paths.extend(found)
        elif not path.exists():
            problems.append((item, "file not found: check the path"))
        else:
            paths.append(path)

    unique: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, problems


def check_output_names(paths: list[Path]) -> None:
    """Reject inputs whose outputs would overwrite each other (same file stem).

    Raises
    ------
    typer.BadParameter
        Naming the first two inputs that share a stem.
    """
    by_stem: dict[str, Path] = {}
    for path in paths:
        other = by_stem.setdefault(path.stem, path)
        if other != path:
            raise typer.BadParameter(
                f"{other} and {path} would write the same outputs (stem {path.stem!r}); "
                "segment them into different --output folders"
            )


def check_rasters(
    paths: list[Path], bands: tuple[int, ...] | None
) -> tuple[dict[Path, tuple[int, int]], list[tuple[str, str]]]:
    """Open each input's header and keep those that are readable rasters with the requested bands.

    This reads no pixels, so a bad input fails in milliseconds instead of
    after the backbone has loaded.

    Returns
    -------
    shapes : dict of Path to (int, int)
        The inputs that passed, in order, with their (height, width) in pixels.
    problems : list of (str, str)
        The others, with the reason.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    readable: dict[Path, tuple[int, int]] = {}
    problems: list[tuple[str, str]] = []
    for path in paths:
        try:
            # The reader warns about a missing CRS later, in tree_seg's words.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    count, shape = src.count, (src.height, src.width)
        except (rasterio.errors.RasterioIOError, OSError) as error:
            problems.append((str(path), f"not a readable raster ({error}): check the file"))
            continue
        if bands and max(bands) > count:
            reason = f"--bands asks for band {max(bands)} but the raster has {count} bands: use indices in 1..{count}"
            problems.append((str(path), reason))
            continue
        readable[path] = shape
    return readable, problems


def check_output_folder(outdir: Path) -> None:
    """Create the output folder and check that it is writable, before any work.

    Raises
    ------
    typer.BadParameter
        When the folder cannot be created or written.
    """
    if outdir.exists() and not outdir.is_dir():
        raise typer.BadParameter(f"output folder {outdir} is a file; choose another --output")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise typer.BadParameter(f"cannot create output folder {outdir}: {error.strerror}; choose another --output") from None
    # A probe file, because os.access reports every folder writable for root.
    try:
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as error:
        raise typer.BadParameter(f"output folder {outdir} is not writable ({error.strerror}); choose another --output") from None


@contextmanager
def output_folder(outdir: Path) -> Iterator[None]:
    """Create and check the output folder, and remove it if the block fails before writing to it.

    A block that ends with an exception, ``typer.Exit`` included, and leaves
    a folder that it created empty, removes that folder, so a failed run
    leaves nothing behind.

    Raises
    ------
    typer.BadParameter
        When the folder cannot be created or written (see :func:`check_output_folder`).
    """
    created = not outdir.exists()
    check_output_folder(outdir)
    try:
        yield
    except BaseException:
        if created and outdir.is_dir() and not any(outdir.iterdir()):
            outdir.rmdir()
        raise
