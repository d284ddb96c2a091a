"""Progress bars for the engine's passes, one bar per pass counting chunks."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

__all__ = ["chunk_bar", "progress_enabled"]


def progress_enabled(requested: bool | None) -> bool:
    """Decide whether to show progress bars.

    Parameters
    ----------
    requested : bool or None
        True or False forces bars on or off. None shows them when the
        ``tree_seg`` logger emits INFO messages, so ``--quiet`` (WARNING)
        hides them.
    """
    if requested is not None:
        return requested
    return logging.getLogger("tree_seg").getEffectiveLevel() <= logging.INFO


def chunk_bar(total: int, description: str, *, enabled: bool) -> tqdm:
    """Return a tqdm bar (a notebook widget under Jupyter) counting ``total`` chunks of one pass."""
    return tqdm(total=total, desc=description, unit="chunk", disable=not enabled, leave=True, dynamic_ncols=True)
