"""Per-key ordering: what ``ORDERING=key`` costs the chat worker, the claim, and latency.

    python bench/ordering.py [--rows 20000] [--rounds 2] [--claims 200]
                             [--claim-backlog 100000] [--latency-seconds 20] [--rate 500]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL, in a scratch database;
REDIS_URL if it answers, else a throwaway Redis (as ``bench/chat_drain.py``, whose pieces
this reuses). First printed: the servers, their ``fsync`` / ``synchronous_commit`` /
``autovacuum`` settings, the CPU count and the date. Three sections:

1. **Drain, ordering on vs off.** Each run starts from ``--rows`` pending ``message.created``
   rows spread round-robin over 1,000, 10 or 1 key (``key = 'k' || (g % keys)``: ``TRUNCATE
   outbox, outbox_keys``, one ``INSERT ... SELECT FROM generate_series``, ``VACUUM
   ANALYZE``), then four chat worker processes (``python -m workers.chat``,
   ``PUBSUB_MODE=global``, default ``BATCH_SIZE``, ``POLL_INTERVAL_MS=1000``) drain them with
   ``ORDERING=key`` or ``ORDERING=none``, alternating, ``--rounds`` times. The clock starts
   once every worker logged ``worker.ready`` (until then the bench holds an ``EXCLUSIVE``
   lock on the table) and stops when no row is pending or in progress. Printed: rows/s per
   round and median, CPU per row (the workers / their PostgreSQL backends), the ratio of
   medians on/off. A subscriber on a fresh ``chat:message:bench-*`` channel keeps every
   envelope in arrival order; for the ordered runs each key's first deliveries must carry
   strictly increasing ``seq`` (violations counted, expected 0; a missing ``seq`` counts
   too). For both modes the arrivals whose ``id`` is below one its key already delivered
   are counted ("id inversions": expected 0 with ordering, not without).
2. **Claim time per row.** ``--claim-backlog`` pending rows (a) all in one key and (b) each
   in its own key; ``--claims`` claims of 100 rows each, ordered and unordered alternating
   (the chat worker's claim: ``exclude_type_prefix="document."``), on one connection of
   ``outbox.storage.pool.create_pool`` (prepared statements reused, as in a worker; ten
   untimed claims of each first), each in a transaction that is rolled back so the backlog
   and the key leases stay as they were; autovacuum is off on the table meanwhile. Printed:
   p50 / p99 ms per claim, microseconds per claimed row at p50, ordered / unordered p50.
   Then the shared buffers the ordered claim hits (``EXPLAIN (ANALYZE, BUFFERS)``, rolled
   back; the unordered claim's in parentheses): on the backlog fresh from ``VACUUM``, after
   the timed claims (their rolled-back row versions stay in the indexes until a vacuum),
   and on a fresh backlog ten times smaller.
3. **Latency with ordering on.** One chat worker (``ORDERING=key``, global mode, defaults,
   LISTEN on); a producer commits one row per transaction at ``--rate`` rows/s for
   ``--latency-seconds``, keys cycling over 100 rooms (``chat_drain.produce``). Latency is
   the subscriber's receipt time minus the time the producer's commit returned (same
   machine clock); the order check of section 1 is applied to what arrived.

Worker log lines at WARNING or above, unexpected events, non-zero exit codes, slow stops and
examples of order violations are listed at the end. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from chat_drain import (
    CHANNEL_PREFIX,
    PROBLEMS,
    STATUS_COUNTS,
    Bench,
    CpuMeter,
    Subscriber,
    hold_table,
    latency_once,
    note_problems,
    ratio,
    start_worker,
    stop_children,
    wait_ready,
    worker_env,
)
from children import Child
from claim_filters import Claim, claim_with, once, settle
from measure import percentile, wait_drained
from scratch import run_with_scratch_database

from devservers import LocalServices, local_services
from outbox.primitives.urls import libpq_dsn
from outbox.storage.claims import claim_statement
from outbox.storage.execution import _compiled
from outbox.storage.pool import create_pool
from workers.chat import ChatSettings

KEY_COUNTS = (1000, 10, 1)
MODES = ("key", "none")
WORKERS = 4
BATCH: int = ChatSettings.model_fields["batch_size"].default
CLAIM_LIMIT = 100
WARM_UP_CLAIMS = 10
CHAT_EXCLUDE = "document."  # the chat worker's claim
EXAMPLES = 3  # order violations listed per run

FILL = """
    INSERT INTO outbox (type, key, payload)
    SELECT 'message.created', 'k' || (g % $1), jsonb_build_object('text', 'hello', 'n', g)
    FROM generate_series(0, $2 - 1) AS g
"""


async def fill(db: Any, rows: int, keys: int) -> None:
    """An empty outbox (and no key leases), then ``rows`` pending rows over ``keys`` keys."""
    await db.execute("TRUNCATE outbox, outbox_keys RESTART IDENTITY")
    await db.execute(FILL, keys, rows)
    await db.execute("VACUUM (ANALYZE) outbox")


# -- what arrived, in order ----------------------------------------------------------------


class ArrivalLog(Subscriber):
    """chat_drain's subscriber, also keeping every body in arrival order."""

    def reset(self) -> None:
        super().reset()
        self.arrivals: list[bytes] = []

    def _record(self, body: bytes, received: float) -> None:
        self.arrivals.append(body)
        super()._record(body, received)


@dataclass
class OrderCheck:
    """Per key, over each message's first delivery (repeats and foreign bodies skipped;
    the subscriber counts those)."""

    keyed: int = 0  # first deliveries of keyed messages
    seq_violations: int = 0  # seq not above the highest its key delivered before
    missing_seq: int = 0  # ordered, but no seq
    id_inversions: int = 0  # id below the highest its key delivered before
    examples: list[str] = field(default_factory=list)

    def summary(self, ordered: bool) -> str:
        inversions = f"{self.id_inversions:,} id inversions"
        if not ordered:
            return f"{self.keyed:,} keyed; {inversions}"
        return (
            f"{self.keyed:,} keyed; {self.seq_violations:,} seq violations,"
            f" {self.missing_seq:,} without seq; {inversions}"
        )


def check_order(bodies: Iterable[bytes], ordered: bool) -> OrderCheck:
    check = OrderCheck()
    top_seq: dict[str, int] = {}
    top_id: dict[str, int] = {}
    seen: set[int] = set()
    for body in bodies:
        try:
            envelope = json.loads(body)
            id_, key, seq = envelope["id"], envelope["key"], envelope["seq"]
        except (ValueError, KeyError, TypeError):
            continue
        if id_ in seen or key is None:
            continue
        seen.add(id_)
        check.keyed += 1
        if id_ < top_id.get(key, -1):
            check.id_inversions += 1
            if not ordered and len(check.examples) < EXAMPLES:
                check.examples.append(f"key {key}: id {id_} after id {top_id[key]}")
        top_id[key] = max(id_, top_id.get(key, -1))
        if not ordered:
            continue
        if seq is None:
            check.missing_seq += 1
            if len(check.examples) < EXAMPLES:
                check.examples.append(f"key {key}: id {id_} without seq")
            continue
        if seq <= top_seq.get(key, -1):
            check.seq_violations += 1
            if len(check.examples) < EXAMPLES:
                check.examples.append(f"key {key}: id {id_} seq {seq} after seq {top_seq[key]}")
        top_seq[key] = max(seq, top_seq.get(key, -1))
    return check


# -- 1. drain, ordering on vs off ----------------------------------------------------------


@dataclass
class DrainRun:
    rate: float | None  # None: did not finish in time
    seconds: float
    ids: int
    repeats: int
    foreign: int
    process_cpu: float  # seconds, the workers
    backend_cpu: float  # seconds, their PostgreSQL backends
    order: OrderCheck

    def deliveries(self, rows: int) -> str:
        """``rows`` when each row arrived once, else what differed."""
        parts = [f"{self.ids:,}" + ("" if self.ids == rows else f" of {rows:,} ids")]
        if self.repeats:
            parts.append(f"+{self.repeats:,} repeats")
        if self.foreign:
            parts.append(f"+{self.foreign:,} foreign")
        return " ".join(parts)


async def start_workers(b: Bench, ordering: str) -> list[Child]:
    children = []
    for i in range(WORKERS):
        name = f"bench-{ordering}-{i + 1}"
        extra = {"PUBSUB_MODE": "global", "POLL_INTERVAL_MS": "1000", "ORDERING": ordering}
        children.append(await start_worker(worker_env(b, BATCH, name, **extra), name))
    return children


async def drain_once(b: Bench, log: ArrivalLog, ordering: str, keys: int, rows: int) -> DrainRun:
    await fill(b.db, rows, keys)
    gate, transaction = await hold_table(b.url)
    children: list[Child] = []
    try:
        children = await start_workers(b, ordering)
        await wait_ready(children)
        log.reset()
        cpu = CpuMeter(children)
        await cpu.start(b.db)
        started = time.perf_counter()
        await transaction.rollback()
        finished = await wait_drained(b.db, within=max(60.0, rows / 100))
        process_cpu, backend_cpu = await cpu.read(b.db)
        await log.settle(rows)
    finally:
        await gate.close()
        await stop_children(children)
    run = f"drain keys={keys} ORDERING={ordering}"
    note_problems(run, children)
    if finished is None:
        counts = dict(await b.db.fetch(STATUS_COUNTS))
        PROBLEMS.append(f"{run}: not drained in time: {counts}")
    seconds = (finished or time.perf_counter()) - started
    order = check_order(log.arrivals, ordered=ordering == "key")
    if ordering == "key":
        PROBLEMS.extend(f"{run}: {example}" for example in order.examples)
    return DrainRun(
        rows / seconds if finished is not None else None,
        seconds,
        len(log.first_seen),
        log.repeats,
        log.foreign,
        process_cpu,
        backend_cpu,
        order,
    )


Results = dict[tuple[int, str], list[DrainRun]]


async def drain_section(b: Bench, log: ArrivalLog, rows: int, rounds: int) -> Results:
    print(
        f"1. drain: {rows:,} pending rows per run, {WORKERS} chat workers (global mode,"
        f" BATCH_SIZE={BATCH}), ORDERING=key and none alternating\n"
    )
    results: Results = {}
    for keys in KEY_COUNTS:
        for round_ in range(1, rounds + 1):
            modes = MODES if round_ % 2 else MODES[::-1]
            for ordering in modes:
                run = await drain_once(b, log, ordering, keys, rows)
                results.setdefault((keys, ordering), []).append(run)
                rate = "did not finish" if run.rate is None else f"{run.rate:,.0f} rows/s"
                print(
                    f"  keys {keys:>5,} ORDERING={ordering:<4} round {round_}: {rate:>15}"
                    f"  ({run.seconds:.2f} s; {log.summary()};"
                    f" {run.order.summary(ordering == 'key')})",
                    flush=True,
                )
    return results


def median_rate(runs: Sequence[DrainRun]) -> float | None:
    rates = [r.rate for r in runs if r.rate is not None]
    return statistics.median(rates) if len(rates) == len(runs) else None


def print_drain_table(results: Results, rows: int, rounds: int) -> None:
    heads = "".join(f"{f'round {i}':>10}" for i in range(1, rounds + 1))
    print(
        f"\n{'keys':>5}  {'ordering':<9}{heads}{'median':>10}{'CPU us/row proc / PG':>22}"
        f"{'seq viol.':>10}{'id inv.':>9}  received per run (ids)"
    )
    for keys in KEY_COUNTS:
        for ordering in MODES:
            runs = results[(keys, ordering)]
            rates = "".join("{:>10}".format(f"{r.rate:,.0f}" if r.rate else "-") for r in runs)
            median = median_rate(runs)
            shown = "-" if median is None else f"{median:,.0f}"
            process = statistics.median(r.process_cpu for r in runs) / rows * 1e6
            backend = statistics.median(r.backend_cpu for r in runs) / rows * 1e6
            cpu = f"{process:.0f} / {backend:.0f}"
            violations = "-"
            if ordering == "key":
                violations = f"{sum(r.order.seq_violations + r.order.missing_seq for r in runs):,}"
            inversions = f"{sum(r.order.id_inversions for r in runs):,}"
            received = ", ".join(r.deliveries(rows) for r in runs)
            print(
                f"{keys:>5,}  {ordering:<9}{rates}{shown:>10}{cpu:>22}{violations:>10}"
                f"{inversions:>9}  {received}"
            )
    print(f"\n{'keys':>5}  rows/s ORDERING=key / none (medians)")
    for keys in KEY_COUNTS:
        on, off = (median_rate(results[(keys, m)]) for m in MODES)
        print(f"{keys:>5,}  {ratio(on, off):>6}")


# -- 2. claim time per row -----------------------------------------------------------------


async def timed(conn: Any, ordered: Claim, unordered: Claim, claims: int) -> str:
    """``claims`` of each, alternating; p50/p99 ms, us per row, ratio of p50s."""
    for _ in range(WARM_UP_CLAIMS):  # past PostgreSQL's five custom plans, caches warm
        await once(conn, ordered)
        await once(conn, unordered)
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(claims):
        pair = ((ordered, samples[0]), (unordered, samples[1]))
        for claim, into in pair if i % 2 == 0 else reversed(pair):
            into.append(await once(conn, claim))
    figures = []
    for taken in samples:
        taken.sort()
        p50 = statistics.median(taken)
        figures.append(f"{p50:7.2f} {percentile(taken, 99):7.2f} {p50 * 1000 / CLAIM_LIMIT:6.1f}")
    o50, u50 = (statistics.median(s) for s in samples)
    return f"{figures[0]} | {figures[1]} | {o50 / u50:5.2f}x"


async def shared_buffers(conn: Any, ordered: bool) -> str:
    """Shared buffers one claim hits (+ reads, if any), from EXPLAIN (ANALYZE, BUFFERS) of
    the statement ``claim_batch`` runs, in a transaction rolled back."""
    statement, params = claim_statement(
        limit=CLAIM_LIMIT,
        lock_seconds=30,
        worker_id="bench",
        ordered=ordered,
        exclude_type_prefix=CHAT_EXCLUDE,
    )
    compiled = _compiled(statement)
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + compiled.sql
    transaction = conn.transaction()
    await transaction.start()
    try:
        plan = await conn.fetchval(explain, *compiled.arguments(params))
    finally:
        await transaction.rollback()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    hit, read = top.get("Shared Hit Blocks", 0), top.get("Shared Read Blocks", 0)
    return f"{hit:,}" + (f" +{read:,} read" if read else "")


async def buffers(conn: Any) -> str:
    return f"{await shared_buffers(conn, True)} ({await shared_buffers(conn, False)})"


async def claim_section(url: str, claims: int, backlog: int) -> None:
    print(
        f"\n2. claim time: {claims} claims of {CLAIM_LIMIT} rows each, ordered and unordered"
        f" alternating (exclude document.), each rolled back\n"
    )
    ordered = claim_with(ordered=True, exclude_type_prefix=CHAT_EXCLUDE)
    unordered = claim_with(ordered=False, exclude_type_prefix=CHAT_EXCLUDE)
    small = max(backlog // 10, 3 * CLAIM_LIMIT)
    pool = await create_pool(url, max_size=1, command_timeout=None)
    try:
        async with pool.acquire() as conn:
            await conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
            print(
                f"{'backlog':<38} {'ordered p50 / p99 ms, us/row':>28} |"
                f" {'unordered p50 / p99, us/row':>27} | ordered/unordered p50"
            )
            buffer_lines = []
            for label, one_key in (("one key", True), ("each row its own key", False)):
                await fill(conn, backlog, 1 if one_key else backlog)
                await settle(conn)
                await once(conn, ordered)  # caches warm
                fresh = await buffers(conn)
                figures = await timed(conn, ordered, unordered, claims)
                after = await buffers(conn)
                print(f"{f'{backlog:,} rows, {label}':<38} {figures}", flush=True)
                await fill(conn, small, 1 if one_key else small)
                await settle(conn)
                await once(conn, ordered)
                smaller = await buffers(conn)
                buffer_lines.append(f"  {label:<21}{fresh:>24}{after:>24}{smaller:>24}")
            print(
                "\nshared buffers hit by one ordered claim (unordered), EXPLAIN (ANALYZE, BUFFERS):"
            )
            print(
                f"  {'':<21}{f'{backlog:,} rows fresh':>24}"
                f"{'after the timed claims':>24}{f'{small:,} rows fresh':>24}"
            )
            for line in buffer_lines:
                print(line)
            await conn.execute("TRUNCATE outbox, outbox_keys RESTART IDENTITY")
            await conn.execute("ALTER TABLE outbox RESET (autovacuum_enabled)")
    finally:
        await pool.close()


# -- 3. latency with ordering on -----------------------------------------------------------


async def latency_section(b: Bench, log: ArrivalLog, rate: float, seconds: float) -> None:
    print(
        f"\n3. end-to-end latency, ORDERING=key: {rate:g} rows/s for {seconds:g} s,"
        " one commit per row, keys over 100 rooms\n"
    )
    await b.db.execute("TRUNCATE outbox, outbox_keys RESTART IDENTITY")
    name = "bench-latency-key"

    def worker() -> Awaitable[Child]:
        env = worker_env(b, BATCH, name, PUBSUB_MODE="global", ORDERING="key")
        return start_worker(env, name)

    await latency_once(b, "chat worker (defaults, LISTEN, ORDERING=key)", worker, rate, seconds)
    order = check_order(log.arrivals, ordered=True)
    PROBLEMS.extend(f"latency: {example}" for example in order.examples)
    print(f"    order: {order.summary(True)}")


# -- main ----------------------------------------------------------------------------------


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


async def describe(db: Any, services: LocalServices) -> None:
    now = datetime.now().astimezone()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{now:%Y-%m-%d %H:%M:%S %Z}; {os.cpu_count()} CPUs, load average {load}")
    settings = {
        name: await db.fetchval(f"SHOW {name}")
        for name in ("server_version", "fsync", "synchronous_commit", "autovacuum")
    }
    which = "throwaway" if services.throwaway_postgres else "DATABASE_URL"
    print(
        f"PostgreSQL {settings['server_version']} ({which}, {where(services.database_url)}):"
        f" fsync {settings['fsync']}, synchronous_commit {settings['synchronous_commit']},"
        f" autovacuum {settings['autovacuum']}"
    )
    client = aioredis.Redis.from_url(services.redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    which = "throwaway" if services.throwaway_redis else "REDIS_URL"
    print(f"Redis {info.get('redis_version', '?')} ({which}, {where(services.redis_url)})")


async def main(url: str, services: LocalServices, args: argparse.Namespace) -> None:
    db = await asyncpg.connect(libpq_dsn(url))
    await db.execute("SET enable_seqscan = off")  # poll from the partial indexes
    await describe(db, services)
    channel = CHANNEL_PREFIX + uuid.uuid4().hex[:8]
    print(f"channel {channel}\n")
    log = ArrivalLog(services.redis_url, channel)
    await log.start()
    b = Bench(url, services.redis_url, channel, db, log)
    try:
        if "drain" in args.sections:
            results = await drain_section(b, log, args.rows, args.rounds)
            print_drain_table(results, args.rows, args.rounds)
        if "claim" in args.sections:
            await claim_section(url, args.claims, args.claim_backlog)
        if "latency" in args.sections and args.latency_seconds > 0:
            await latency_section(b, log, args.rate, args.latency_seconds)
    finally:
        await log.close()
        await db.close()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nworker problems:" if PROBLEMS else "\nno worker problems logged")
    for problem in PROBLEMS:
        print(f"  {problem}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--claim-backlog", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("drain", "claim", "latency"),
        default=["drain", "claim", "latency"],
        help="which sections to run (default: all three)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    with local_services() as services:
        # run_with_scratch_database reads DATABASE_URL: point it at the server just chosen.
        os.environ["DATABASE_URL"] = services.database_url
        run_with_scratch_database(lambda url: main(url, services, args))
