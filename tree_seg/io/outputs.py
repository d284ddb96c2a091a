"""Names and layout of the files one segmentation run writes.

Every output of a run is one file directly in the output folder, named::

    OUTDIR/<stem>_<method>_<kind>.<ext>

``stem`` is the input file name without its suffix (``"array"`` for an
in-memory array), ``method`` the method with its refinement (``kmeans``,
``head-refine``, ``kmeans+slic``), and ``kind`` what the file holds. For the
input ``tcd_00000_image.tif`` and the method ``kmeans`` a run writes:

================================  =============================================
file                              contents
================================  =============================================
``..._kmeans_labels.tif``         label GeoTIFF, uint8, 0..K-1, 255 = nodata
``..._kmeans_metadata.json``      settings, input description, K, timings
``..._kmeans_legend.png``         labels with one colour per cluster
``..._kmeans_overlay.png``        labels blended over the image
``..._kmeans_side_by_side.png``   image and labels next to each other
``..._kmeans_elbow.png``          inertia against K, with the chosen K
================================  =============================================

where ``...`` is ``tcd_00000_image``. Stem, method and kind are sanitised so a
name never contains a path separator or another character that is unsafe in
file names. Every character other than ASCII letters, digits, ``.``, ``_``,
``+`` and ``-`` becomes ``-``, runs of ``-`` shrink to one, and leading and
trailing dots and dashes are dropped, so ``head-refine/slic`` becomes ``head-refine-slic``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tree_seg.exceptions import InvalidInputError

__all__ = ["STANDARD_KINDS", "OutputManager", "sanitize_name"]

logger = logging.getLogger(__name__)

STANDARD_KINDS: dict[str, str] = {
    "labels": "tif",
    "metadata": "json",
    "legend": "png",
    "overlay": "png",
    "side_by_side": "png",
    "elbow": "png",
    "responsibilities": "nc",
}
"""Kinds of output a run may write, with their file extensions."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]+(\.[A-Za-z0-9]+)*")


def sanitize_name(part: str, *, role: str = "name") -> str:
    """Make one part of an output file name safe.

    Parameters
    ----------
    part : str
        A stem, method or kind.
    role : str, default="name"
        Which part it is (``"stem"``, ``"method"``, ``"kind"``), for the error message.

    Returns
    -------
    str
        ``part`` with each run of characters other than ASCII letters,
        digits, ``.``, ``_``, ``+`` and ``-`` replaced by one ``-``, runs of
        ``-`` collapsed, and leading or trailing dots and dashes removed.

    Raises
    ------
    InvalidInputError
        If nothing is left, e.g. for ``"/"`` or ``".."``.
    """
    safe = _UNSAFE.sub("-", str(part))
    safe = re.sub(r"-{2,}", "-", safe).strip(".-")
    if not safe:
        raise InvalidInputError(f"invalid {role} {part!r}: it has no letter or digit to use in a file name")
    return safe


class OutputManager:
    """Paths of the output files of one run, named ``<stem>_<method>_<kind>.<ext>``.

    Parameters
    ----------
    outdir : str or Path
        Output folder; created by the first call to :meth:`path`.
    stem : str
        Input file stem, e.g. ``"tcd_00000_image"``.
    method : str
        Method name, e.g. ``"kmeans"``, ``"head-refine"`` or ``"kmeans+slic"``.

    Examples
    --------
    >>> outputs = OutputManager("out", "tcd_00000_image", "kmeans+slic")
    >>> outputs.name("labels", "tif")
    'tcd_00000_image_kmeans+slic_labels.tif'
    >>> outputs.name("legend", "png")
    'tcd_00000_image_kmeans+slic_legend.png'
    """

    def __init__(self, outdir: str | Path, stem: str, method: str) -> None:
        self.outdir = Path(outdir)
        self.stem = sanitize_name(stem, role="stem")
        self.method = sanitize_name(method, role="method")
        self._named: set[str] = set()

    @property
    def prefix(self) -> str:
        """The start every file name of this run shares, ``<stem>_<method>_``."""
        return f"{self.stem}_{self.method}_"

    def name(self, kind: str, ext: str) -> str:
        """Return the file name of one output, without the folder.

        Parameters
        ----------
        kind : str
            What the file holds, e.g. ``"labels"`` or ``"side_by_side"``.
        ext : str
            File extension without the leading dot, e.g. ``"tif"``.

        Raises
        ------
        InvalidInputError
            If ``ext`` has characters other than letters, digits and inner dots.
        """
        safe_kind = sanitize_name(kind, role="kind")
        extension = str(ext).lstrip(".")
        if not _EXTENSION.fullmatch(extension):
            raise InvalidInputError(f"invalid extension {ext!r}: expected letters and digits, e.g. 'tif' or 'png'")
        name = f"{self.prefix}{safe_kind}.{extension}"
        self._named.add(name)
        return name

    def path(self, kind: str, ext: str) -> Path:
        """Return the path of one output, creating the output folder when missing.

        Parameters
        ----------
        kind : str
            What the file holds, e.g. ``"labels"``.
        ext : str
            File extension without the leading dot.

        Returns
        -------
        Path
            ``outdir / "<stem>_<method>_<kind>.<ext>"``.
        """
        name = self.name(kind, ext)
        self.outdir.mkdir(parents=True, exist_ok=True)
        return self.outdir / name

    def existing(self) -> list[Path]:
        """List the files of this run that exist in the output folder, sorted by name.

        A file counts when its name is ``<stem>_<method>_<kind>.<ext>`` for a
        kind in :data:`STANDARD_KINDS`, or when this manager returned its name.
        Files of another stem or method that share the prefix, such as those
        of the stem ``a_kmeans`` next to the stem ``a``, are left out unless
        the rest of their name is a standard kind.
        """
        if not self.outdir.is_dir():
            return []
        found = []
        for entry in self.outdir.iterdir():
            if not entry.is_file() or not entry.name.startswith(self.prefix):
                continue
            kind = entry.name[len(self.prefix):].split(".", 1)[0]
            if kind in STANDARD_KINDS or entry.name in self._named:
                found.append(entry)
        return sorted(found)

    def remove_existing(self) -> list[Path]:
        """Delete the files that :meth:`existing` lists, before a run writes new ones.

        A rerun with other settings would otherwise leave files of both runs
        side by side, such as an old elbow plot next to new labels, or old
        labels next to new pictures when the rerun is interrupted while it
        writes. The labels are written last, so after this call their
        presence still means that every output of the run is complete.

        Returns
        -------
        list of Path
            The deleted files.
        """
        removed = self.existing()
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            logger.info("removed %d output(s) of an earlier run: %s", len(removed),
                        ", ".join(path.name for path in removed))
        return removed
