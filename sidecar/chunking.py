"""Splitting text into overlapping chunks for retrieval.

:func:`split` cuts ``text`` into chunks of at most ``size`` characters. Each chunk ends at
the best boundary in its second half (a paragraph break, else a sentence end, else a
space; a hard cut only inside a very long word), and the next chunk starts up to
``overlap`` characters earlier, at the start of a word, so no sentence is lost at a seam.
Together the chunks cover the whole text, in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Chunk", "split"]

_BOUNDARIES = (
    re.compile(r"\n\n"),
    re.compile(r"[.!?\u3002\uff01\uff1f][\"')\]]*\s"),  # also CJK full stops
    re.compile(r"\s"),
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """``text == source[start:end]``."""

    start: int
    end: int
    text: str


def _end(text: str, start: int, size: int) -> int:
    limit = start + size
    if limit >= len(text):
        return len(text)
    window = text[start + size // 2 : limit + 1]
    for boundary in _BOUNDARIES:
        last = None
        for match in boundary.finditer(window):
            last = match
        if last is not None:
            return start + size // 2 + last.end()  # the caller strips trailing space
    return limit


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    candidate = max(end - overlap, start + 1)
    if candidate < end and candidate > 0 and not text[candidate - 1].isspace():
        space = text.find(" ", candidate, end)  # move to the start of the next word
        candidate = space + 1 if space != -1 else end
    while candidate < len(text) and text[candidate].isspace():
        candidate += 1
    return candidate


def split(text: str, *, size: int, overlap: int) -> list[Chunk]:
    """Chunks of ``text`` (see the module docstring). ``0 <= overlap < size``."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size (got {size}, {overlap})")
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        end = min(_end(text, start, size), start + size)
        piece = text[start:end].rstrip()
        if piece:
            chunks.append(Chunk(start, start + len(piece), piece))
        if end >= len(text):
            break
        start = _next_start(text, start, end, overlap)
    return chunks
