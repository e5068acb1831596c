"""Child processes of the benchmarks: their output kept, their ready line noticed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Child", "read_lines"]


@dataclass
class Child:
    """A worker (or loop) process, its ready signal and everything it wrote to stderr."""

    name: str
    proc: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lines: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    stop_seconds: float | None = None
    metrics_port: int | None = None
    """A worker's ``METRICS_PORT`` (its phase figures are read there before it stops)."""


async def read_lines(
    child: Child, stream: Any, *, marker: str | None = None, keep: bool = True
) -> None:
    """Keep ``stream`` drained; set ``child.ready`` at the first line containing ``marker``;
    with ``keep``, store the lines for the report."""
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if marker is not None and not child.ready.is_set() and marker in line:
            child.ready.set()
        if keep:
            child.lines.append(line)
