"""One run of traffic through a running stack: produce, drain, summarize.

The first stop signal (Ctrl-C; see ``demo.stopping``) ends producing early; the run then
drains what is queued (at most ``drain_timeout`` seconds) and summarizes as usual. A second
one skips the rest of the drain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from demo.report import LiveView, Summary, outbox_counts, reached_rates, summarize
from demo.stack import CHANNEL_PREFIX, Stack
from demo.stopping import StopFlag
from demo.traffic import Received, Sent, produce, subscribe
from outbox.primitives.urls import async_database_url

__all__ = ["Traffic", "run_traffic"]

SAMPLE_SECONDS = 1.0


@dataclass(frozen=True)
class Traffic:
    """How much to send, for how long, and how long to wait for the rest."""

    seconds: float
    chat_rate: float
    document_rate: float
    rooms: int
    unreadable_every: int
    drain_timeout: float


@dataclass
class _Stops:
    signals: StopFlag
    crashed: str | None = None

    @property
    def stop_producing(self) -> bool:
        return self.signals.count > 0 or self.crashed is not None


async def run_traffic(
    traffic: Traffic,
    database_url: str,
    redis_url: str,
    stack: Stack,
    run_id: str,
    signals: StopFlag,
) -> tuple[Summary, str | None]:
    """Run the traffic; return the summary and, if a child process died, how.

    Chat messages go to rooms ``demo-{run_id}-room-{n}``, so the subscriber's pattern
    covers this run's channels (``conv:{key}``) and nothing else on a shared Redis.
    """
    engine = create_async_engine(async_database_url(database_url), pool_size=8)
    sent, received, stops = Sent(), Received(), _Stops(signals)
    rooms = [f"demo-{run_id}-room-{n}" for n in range(traffic.rooms)]
    view = LiveView(engine, sent, received)
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as group:
            pattern = f"{CHANNEL_PREFIX}demo-{run_id}-room-*"
            await group.start(subscribe, redis_url, pattern, received)
            group.start_soon(_sample, view, stack, stops)
            deadline = started + traffic.seconds
            producing_from = time.time()
            await produce(
                engine,
                sent,
                chat_rate=traffic.chat_rate,
                document_rate=traffic.document_rate,
                rooms=rooms,
                unreadable_every=traffic.unreadable_every,
                until=lambda: stops.stop_producing or time.monotonic() >= deadline,
            )
            producing = (producing_from, time.time())
            view.phase = "draining what is queued (Ctrl-C again skips)"
            with anyio.move_on_after(traffic.drain_timeout):
                await _drain(engine, sent, received, stops)
            await view.sample()
            rates = reached_rates(
                sent, received, producing, traffic.chat_rate, traffic.document_rate
            )
            summary = await summarize(engine, sent, received, time.monotonic() - started, rates)
            group.cancel_scope.cancel()
    finally:
        await engine.dispose()
    return summary, stops.crashed


async def _sample(view: LiveView, stack: Stack, stops: _Stops) -> None:
    while True:
        await anyio.sleep(SAMPLE_SECONDS)
        await view.sample()
        dead = stack.exited()
        if dead and stops.crashed is None:
            child = dead[0]
            stops.crashed = f"{child.name} exited; the end of {child.log_path}:\n{child.log_tail()}"


async def _drain(engine: AsyncEngine, sent: Sent, received: Received, stops: _Stops) -> None:
    """Wait until every chat message arrived and no document message is queued; a new
    interrupt or a crashed child ends the wait."""
    interrupts = stops.signals.count
    while stops.crashed is None and stops.signals.count == interrupts:
        counts = await outbox_counts(engine)
        queued = counts.get((True, "pending"), 0) + counts.get((True, "in_progress"), 0)
        if queued == 0 and all(i in received.at for i in sent.chat):
            return
        await anyio.sleep(0.1)
