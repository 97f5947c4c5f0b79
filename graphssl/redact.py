"""Values a pipeline took from the environment (``${oc.env:NAME}``), kept out of what graphssl writes.

:mod:`graphssl.loading` finds them (see ``environment_paths``) and remembers their values here;
the tracker replaces them in run names, tags and parameters, the command line in its error
messages. Parameters are masked by path as well (``LoadedPipeline.masked``), which also covers
values too short to replace safely in free text.
"""
from __future__ import annotations

MASK = "***"
MIN_FREE_TEXT = 4  # shorter values ("1", "cpu") are masked by their path only, not wherever they occur

_values: set[str] = set()


def remember(values) -> None:
    """Values from the environment that must not be written or shown in this process."""
    _values.update(v for v in map(str, values) if len(v) >= MIN_FREE_TEXT)


def scrub(text: str) -> str:
    """``text`` with every remembered value replaced by ``***`` (longest first)."""
    if not _values or not isinstance(text, str):
        return text
    for value in sorted(_values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text
