"""``python -m reliability.soak`` (``make soak``): a steady rate for a long time, watched.

Starts a throwaway PostgreSQL with production settings (``fsync`` and autovacuum on) and a
throwaway Redis, and 2 chat workers (``ORDERING=key``, room mode). Producers commit
``--rate`` chat messages a second (transactions of 10 rows over 4 connections), a subscriber
measures commit -> arrival, and ``outbox purge published --older-than RETAIN`` runs every
minute, as the operating guide advises (with a retention fitted to the run's length). Each
minute it prints the rates, the outbox table's and indexes' sizes, dead tuples, autovacuum
runs, lag p50/p99 and the workers' claim time. At the end it compares the first and last
fifth of the run (five minutes each in a 25-minute or longer run).

Exit codes: 0 steady (the table stopped growing, latency and claim time within 20 % first
to last); 1 not (the verdict says what); 2 bad options.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.from_thread import start_blocking_portal
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import outbox
from devservers import throwaway_postgres, throwaway_redis
from outbox.primitives.durations import parse_duration
from outbox.primitives.messages import NewMessage
from outbox.primitives.urls import async_database_url
from outbox.storage.migrate import upgrade
from reliability.fleet import Fleet
from reliability.ledger import Arrival, Ledger
from reliability.options import at_least, positive_duration
from reliability.traffic import subscribe
from reliability.verdict import quantile

__all__ = ["main"]

log = logging.getLogger("reliability.soak")

LANES = 4
ROWS_PER_TRANSACTION = 10
DRIFT_LIMIT = 1.2
GROWTH_LIMIT = 1.25
CLAIM_FLOOR_SECONDS = 0.0005
"""Claim times closer than this count as equal (the histogram's resolution is coarse)."""

_SIZES = """
SELECT pg_relation_size('outbox'), pg_indexes_size('outbox'),
       pg_relation_size('ix_outbox_claimable'), s.n_live_tup, s.n_dead_tup,
       s.autovacuum_count
FROM pg_stat_user_tables s WHERE s.relname = 'outbox'
"""
_CHECKPOINTS = (  # PostgreSQL 17 moved the counts to pg_stat_checkpointer
    "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
    "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
)


@dataclass
class Minute:
    minute: int
    produced: float
    delivered: float
    table_mb: float
    indexes_mb: float
    claim_index_mb: float
    live: int
    dead: int
    autovacuums: int
    checkpoints: int
    lag_p50: float
    lag_p99: float
    claim_p50: float
    claim_mean: float
    purged: int

    def line(self) -> str:
        return (
            f"| {self.minute:>3} | {self.produced:>6,.0f} | {self.delivered:>6,.0f} |"
            f" {self.table_mb:>7.1f} | {self.indexes_mb:>7.1f} | {self.claim_index_mb:>6.2f} |"
            f" {self.live:>8,} | {self.dead:>8,} | {self.autovacuums:>3} | {self.checkpoints:>3} |"
            f" {self.lag_p50 * 1e3:>6.1f} | {self.lag_p99 * 1e3:>6.1f} |"
            f" {self.claim_p50 * 1e3:>5.2f} | {self.claim_mean * 1e3:>5.2f} | {self.purged:>7,} |"
        )


HEADER = (
    "| min | made/s | got/s | table MB | index MB | claim ix MB | live | dead | autovacuums |"
    " checkpoints |"
    " lag p50 ms | lag p99 ms | claim p50 ms | claim mean ms | purged |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class _Window:
    """What the current minute has seen so far."""

    lags: list[float] = field(default_factory=list)
    produced: int = 0
    purged: int = 0


class Soak:
    def __init__(self, options: argparse.Namespace, database_url: str, fleet: Fleet) -> None:
        self.options, self.database_url, self.fleet = options, database_url, fleet
        self.committed: dict[int, float] = {}
        self.window = _Window()
        self.minutes: list[Minute] = []
        self.claims: tuple[dict[float, float], float, float] = ({}, 0.0, 0.0)

    async def run(
        self, redis_url: str, also: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    ) -> None:
        """Produce, purge and sample each minute for ``--minutes``; ``also`` run alongside
        (cancelled at the end)."""
        engine = create_async_engine(async_database_url(self.database_url), pool_size=LANES + 2)
        try:
            async with anyio.create_task_group() as group:
                await group.start(subscribe, redis_url, Ledger(), self._arrived)
                stop_at = time.monotonic() + self.options.minutes * 60
                for lane in range(LANES):
                    group.start_soon(self._produce, engine, lane, stop_at)
                group.start_soon(self._purge_every_minute)
                for task in also:
                    group.start_soon(task)
                self.claims = await self._claim_histogram()
                for minute in range(1, int(self.options.minutes) + 1):
                    due = stop_at - (self.options.minutes - minute) * 60
                    await anyio.sleep(max(0.0, due - time.monotonic()))
                    self.minutes.append(await self._sample(engine, minute))
                    print(self.minutes[-1].line(), flush=True)
                group.cancel_scope.cancel()
        finally:
            await engine.dispose()

    def _arrived(self, arrival: Arrival) -> None:
        committed = self.committed.pop(arrival.id, None)
        if committed is not None:
            self.window.lags.append(arrival.at - committed)

    async def _produce(self, engine: AsyncEngine, lane: int, stop_at: float) -> None:
        rate = self.options.rate / LANES / ROWS_PER_TRANSACTION  # transactions per second
        rooms = self.options.rooms
        start, n = time.monotonic(), 0
        while time.monotonic() < stop_at:
            messages = [
                NewMessage("message.created", {"n": n}, f"room-{(n * 7 + i + lane) % rooms}")
                for i in range(ROWS_PER_TRANSACTION)
            ]
            async with engine.connect() as conn:
                ids = await outbox.enqueue_many(conn, messages)
                committing = time.time()
                await conn.commit()
            for outbox_id in ids:
                self.committed[outbox_id] = committing
            self.window.produced += len(ids)
            n += 1
            await anyio.sleep(max(0.0, start + n / rate - time.monotonic()))

    async def _purge_every_minute(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.database_url}
        argv = [
            sys.executable,
            "-m",
            "outbox.cli",
            "purge",
            "published",
            "--older-than",
            self.options.retain,
        ]
        while True:
            await anyio.sleep(60)
            done = await anyio.run_process(argv, env=env, check=False)
            found = re.search(rb"purged (\d+)", done.stdout)
            if done.returncode != 0 or found is None:
                log.warning("outbox purge failed (%d): %s", done.returncode, done.stderr[-500:])
            else:
                self.window.purged += int(found.group(1))

    async def _sample(self, engine: AsyncEngine, minute: int) -> Minute:
        window, self.window = self.window, _Window()
        async with engine.connect() as conn:
            row = (await conn.execute(text(_SIZES))).one()
            checkpoints = -1
            for query in _CHECKPOINTS:
                try:
                    async with conn.begin_nested():
                        checkpoints = int((await conn.execute(text(query))).scalar_one())
                    break
                except Exception:
                    continue
        claims = await self._claim_histogram()
        claim_p50, claim_mean = _histogram_delta(self.claims, claims)
        self.claims = claims
        lags = sorted(window.lags)
        mb = 1 / 1048576
        return Minute(
            minute=minute,
            produced=window.produced / 60,
            delivered=len(lags) / 60,
            table_mb=row[0] * mb,
            indexes_mb=row[1] * mb,
            claim_index_mb=row[2] * mb,
            live=row[3],
            dead=row[4],
            autovacuums=row[5],
            checkpoints=checkpoints,
            lag_p50=quantile(lags, 0.5),
            lag_p99=quantile(lags, 0.99),
            claim_p50=claim_p50,
            claim_mean=claim_mean,
            purged=window.purged,
        )

    async def _claim_histogram(self) -> tuple[dict[float, float], float, float]:
        """The chat workers' ``outbox_claim_seconds``: cumulative buckets, sum and count."""
        buckets: dict[float, float] = {}
        total = count = 0.0
        async with httpx.AsyncClient(timeout=5) as client:
            for slot in self.fleet.chat_slots():
                body = (await client.get(slot.metrics_url)).text
                for name, le, value in re.findall(
                    r'^outbox_claim_seconds_(bucket|sum|count)(?:\{le="([^"]+)"\})? (\S+)$',
                    body,
                    re.M,
                ):
                    if name == "bucket":
                        bound = float(le)
                        buckets[bound] = buckets.get(bound, 0.0) + float(value)
                    elif name == "sum":
                        total += float(value)
                    else:
                        count += float(value)
        return buckets, total, count


def _histogram_delta(
    before: tuple[dict[float, float], float, float], after: tuple[dict[float, float], float, float]
) -> tuple[float, float]:
    """p50 (interpolated within its bucket, as Prometheus does) and mean over the interval."""
    count = after[2] - before[2]
    if count <= 0:
        return 0.0, 0.0
    mean = (after[1] - before[1]) / count
    lower, below = 0.0, 0.0
    for bound in sorted(b for b in after[0] if b != float("inf")):
        cumulative = after[0][bound] - before[0].get(bound, 0.0)
        if cumulative >= count / 2:
            share = (count / 2 - below) / max(cumulative - below, 1e-9)
            return lower + (bound - lower) * share, mean
        lower, below = bound, cumulative
    return lower, mean


def verdict(minutes: list[Minute], asked_rate: float, warm_up_minutes: int) -> list[str]:
    """Compare the first and last fifth of the run, and the table's size over the minutes
    after ``warm_up_minutes``; lines starting ``FAIL`` are the problems."""
    span = max(1, min(5, len(minutes) // 5))
    first, last = minutes[:span], minutes[-span:]
    problems = []

    def median(rows: list[Minute], attr: str) -> float:
        return float(statistics.median(getattr(m, attr) for m in rows))

    lines = []
    for attr, label, floor in (
        ("lag_p50", "lag p50", 0.0),
        ("claim_p50", "claim p50", CLAIM_FLOOR_SECONDS),
        ("claim_mean", "claim mean", CLAIM_FLOOR_SECONDS),
    ):
        a, b = median(first, attr), median(last, attr)
        ratio = b / a if a > 0 else float("inf")
        lines.append(
            f"{label}: first {span} min {a * 1e3:.2f} ms,"
            f" last {span} min {b * 1e3:.2f} ms ({ratio:.2f}x)"
        )
        if b > a * DRIFT_LIMIT and b - a > floor:
            problems.append(f"{label} drifted: {ratio:.2f}x")
    # The table fills until purge starts deleting (retention, then a minute's cadence):
    # growth is judged on the minutes after that, first half against second half.
    steady = minutes[warm_up_minutes:]
    half = len(steady) // 2
    if half == 0:
        lines.append(f"outbox table + indexes: too short to judge after {warm_up_minutes} min")
    else:
        before = max(m.table_mb + m.indexes_mb for m in steady[:half])
        after = max(m.table_mb + m.indexes_mb for m in steady[half:])
        lines.append(
            f"outbox table + indexes: at most {before:.1f} MB in minutes"
            f" {steady[0].minute}-{steady[half - 1].minute}, {after:.1f} MB in minutes"
            f" {steady[half].minute}-{steady[-1].minute}"
        )
        if after > before * GROWTH_LIMIT:
            problems.append(f"the table kept growing: {before:.1f} -> {after:.1f} MB")
    produced = statistics.median(m.produced for m in minutes)
    delivered = statistics.median(m.delivered for m in minutes)
    lines.append(
        f"rate: asked {asked_rate:,.0f} msg/s, produced {produced:,.0f},"
        f" delivered {delivered:,.0f} (medians of the minutes)"
    )
    if produced < 0.95 * asked_rate or delivered < 0.95 * asked_rate:
        lines.append(
            f"NOTE this machine did not hold {asked_rate:,.0f} msg/s;"
            f" it held {min(produced, delivered):,.0f}"
        )
    return lines + [f"FAIL {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="soak: %(message)s", stream=sys.stdout)
    for noisy in ("httpx", "alembic", "outbox.devservers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log_dir = Path(tempfile.mkdtemp(prefix="outbox-soak-"))
    with throwaway_postgres(durable=True) as database_url, throwaway_redis() as redis_url:
        upgrade(database_url)
        fleet = Fleet(database_url, redis_url, log_dir)
        try:
            fleet.start(chat_workers=2, document_workers=0, chat_env={})
            log.info(
                "%g min at %g msg/s over %d rooms; purge published --older-than %s every minute;"
                " PostgreSQL with fsync, synchronous_commit and autovacuum on",
                options.minutes,
                options.rate,
                options.rooms,
                options.retain,
            )
            print(HEADER, flush=True)
            soak = Soak(options, database_url, fleet)
            with start_blocking_portal() as portal:
                portal.call(soak.run, redis_url)
        finally:
            fleet.stop()
    retain_minutes = math.ceil(parse_duration(options.retain).total_seconds() / 60)
    lines = verdict(soak.minutes, options.rate, warm_up_minutes=retain_minutes + 2)
    print("\n".join(lines), flush=True)
    ok = not any(line.startswith("FAIL") for line in lines)
    print(f"soak: {'PASS' if ok else 'FAIL'}", flush=True)
    if ok:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        log.info("the processes' logs are kept in %s", log_dir)
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reliability.soak",
        description="A steady rate for a long time: does the outbox stay flat and fast?",
        epilog="Exit codes: 0 steady, 1 drifted or grew, 2 bad options.",
    )
    add = parser.add_argument
    add("--minutes", type=at_least(int, 1), default=30, help="how long (30)")
    add("--rate", type=at_least(float, 1), default=1000.0, help="chat messages per second (1,000)")
    add("--rooms", type=at_least(int, 1), default=200, help="chat rooms (200)")
    add(
        "--retain",
        type=positive_duration,
        default="2m",
        help="purge published rows older than this, each minute (2m)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
