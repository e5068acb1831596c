"""Measuring helpers shared by the benchmarks: CPU time, percentiles, waiting for a drain."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.02

# Both subqueries are answered from the partial indexes.
DRAINED = """
    SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')
       AND NOT EXISTS (SELECT 1 FROM outbox WHERE status = 'in_progress')
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live local process (Linux ``/proc``); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state, field 3 of stat(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1]


async def wait_drained(db: Any, within: float) -> float | None:
    """perf_counter() when no outbox row is pending or in progress; None after ``within`` s."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if await db.fetchval(DRAINED):
            return time.perf_counter()
        await asyncio.sleep(POLL_SECONDS)
    return None
