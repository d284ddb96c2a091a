"""Name the input being processed in log records, for batch logs.

A batch segments several rasters one after another, and its log lines would
not say which raster they belong to. :func:`input_context` records the
current input's name in a context variable, and :class:`InputTagFilter`
copies it into each record as ``record.input_tag`` (``"[name] "``, or an
empty string outside any input). Records handled in another thread, such as
those that Dask workers forward to the client's event loop, do not see the
context variable, so they get the name of the innermost input still open in
any thread. The library only records the name, so it changes nothing for
callers that do not add the filter. The command line adds it to its
handlers and puts ``%(input_tag)s`` in its format.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

__all__ = ["InputTagFilter", "current_input", "input_context"]

_current_input: contextvars.ContextVar[str | None] = contextvars.ContextVar("tree_seg_input", default=None)
_open_inputs: list[str] = []


def current_input() -> str | None:
    """Return the name set by the innermost :func:`input_context`, or None outside one."""
    return _current_input.get()


@contextlib.contextmanager
def input_context(name: str) -> Iterator[None]:
    """Tag log records made inside the block with ``name``.

    Parameters
    ----------
    name : str
        Short name of the input, usually its file name.
    """
    token = _current_input.set(name)
    _open_inputs.append(name)
    try:
        yield
    finally:
        _current_input.reset(token)
        _open_inputs.remove(name)


class InputTagFilter(logging.Filter):
    """Logging filter that sets ``record.input_tag`` to ``"[name] "`` or ``""``.

    It rejects no record. Add it to a handler whose format contains
    ``%(input_tag)s``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        name = _current_input.get()
        if name is None and _open_inputs:
            name = _open_inputs[-1]
        record.input_tag = f"[{name}] " if name else ""
        return True
