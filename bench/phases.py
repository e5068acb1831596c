"""Where a drain's time goes, per batch: claim, publish, acknowledge, and waiting.

A worker reports its phases in its Prometheus metrics (``outbox_claim_seconds``,
``outbox_handle_seconds``, ``outbox_ack_seconds``, ``outbox_dispatch_wait_seconds_total``),
read from ``/metrics`` before it stops; a raw loop times its own phases and prints them as
one ``phases {...}`` line on stdout when it stops. A worker overlaps its phases (several
batches in flight, acknowledgements grouped in the background), so its per-batch figures
add up to more than its wall time; a raw loop's are sequential.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterable, Mapping

__all__ = ["PHASES", "add", "per_batch", "raw_phases", "worker_phases"]

PHASES = ("claim", "publish", "ack", "wait")

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>[0-9.e+-]+)$")


def worker_phases(port: int) -> dict[str, float]:
    """A worker's phase totals (seconds) and its batch count, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    totals = dict.fromkeys((*PHASES, "batches"), 0.0)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, value = match["name"], float(match["value"])
        if name == "outbox_claim_seconds_sum":
            totals["claim"] += value
        elif name == "outbox_handle_seconds_sum":
            totals["publish"] += value
        elif name == "outbox_handle_seconds_count":
            totals["batches"] += value
        elif name == "outbox_ack_seconds_sum":
            totals["ack"] += value
        elif name == "outbox_dispatch_wait_seconds_total":
            totals["wait"] += value
    return totals


def raw_phases(lines: Iterable[str]) -> dict[str, float]:
    """A raw loop's phase totals, from the ``phases {...}`` line it printed when it stopped."""
    for line in lines:
        if line.startswith("phases "):
            found: dict[str, float] = json.loads(line.removeprefix("phases "))
            return found
    return dict.fromkeys((*PHASES, "batches"), 0.0)


def add(totals: Iterable[Mapping[str, float]]) -> dict[str, float]:
    summed = dict.fromkeys((*PHASES, "batches"), 0.0)
    for one in totals:
        for name in summed:
            summed[name] += one.get(name, 0.0)
    return summed


def per_batch(totals: Mapping[str, float]) -> str:
    """``claim / publish / ack / wait`` in milliseconds per batch."""
    batches = totals.get("batches", 0.0)
    if not batches:
        return "-"
    return " / ".join(f"{totals[p] / batches * 1000:6.2f}" for p in PHASES)
