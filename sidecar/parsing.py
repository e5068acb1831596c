"""One document's bytes to chunks: the CPU-bound part, run in a worker process.

:func:`parse` is what the sidecar runs through ``anyio.to_process`` under a deadline, for
every document: text extraction is linear in its input, but a huge document (or one of
pypdf's slow corners) costs a killed worker process and a 422, never a frozen server.
"""

from __future__ import annotations

from sidecar.chunking import Chunk, split
from sidecar.extract import extract_text

__all__ = ["parse"]


def parse(content: bytes, content_type: str, size: int, overlap: int) -> tuple[int, list[Chunk]]:
    """``(characters of extracted text, chunks)``; raises ``UnreadableDocumentError``."""
    text = extract_text(content, content_type)
    return len(text), split(text, size=size, overlap=overlap)
