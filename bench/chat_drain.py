"""Chat drain: the chat worker process against a raw asyncpg claim/publish/ack loop.

    python bench/chat_drain.py [--rows 50000] [--batch 100 500] [--rounds 2]
                               [--latency-seconds 10] [--rate 500] [--channel NAME]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL, in a scratch database;
REDIS_URL if it answers, else a throwaway Redis. Two measurements:

1. **Drain throughput** (rows/s). Each run starts from ``--rows`` pending
   ``message.created`` rows (``TRUNCATE``, one ``INSERT ... SELECT FROM generate_series``,
   ``VACUUM ANALYZE``), then starts one or two processes of either

   * the chat worker, ``python -m workers.chat`` (``PUBSUB_MODE=global``, the given
     ``BATCH_SIZE``, ``POLL_INTERVAL_MS=1000``, default ``CONCURRENCY``), or
   * the raw loop (this file with ``--raw-loop``): one asyncpg connection running a
     one-statement claim (unfiltered, ``FOR UPDATE SKIP LOCKED``), the same JSON envelope as
     ``workers.chat.envelope`` PUBLISHed in one redis-py pipeline, a one-statement ack;
     after an empty claim it waits a second (the worker's poll interval), until SIGTERM.

   The clock starts once every process is ready (the worker's ``worker.ready`` log line,
   the loop's ``ready`` on stdout): until then the bench holds an ``EXCLUSIVE`` lock on the
   table, so reads pass but claims wait and no process gets a head start. It stops when no
   row is ``pending`` or ``in_progress`` (polled every 20 ms). Variants alternate within
   each round. A Redis subscriber counts what arrives on the channel: by default a fresh
   ``chat:message:bench-*``, so that other users of a shared Redis neither disturb the
   counts nor receive the flood. Also printed: CPU time used during the drain by the
   processes and by their PostgreSQL backends (Linux ``/proc``; everything runs locally).
2. **End-to-end latency** at a fixed rate, one process, ``BATCH_SIZE=100``: a producer
   commits one row per transaction at ``--rate`` rows/s (absolute deadlines) for
   ``--latency-seconds``; latency is the subscriber's receipt time minus the time the
   producer's commit returned (same machine clock). The chat worker runs with its defaults
   (LISTEN on); the raw loop, which has no LISTEN, polls every 10 ms after an empty claim.

After the drain table, where each variant's time went, in milliseconds per batch: claim,
publish, acknowledge and waiting (``bench/phases.py``: a worker's own metrics, read from its
``/metrics`` before it stops; the raw loop's own clock).

Worker log lines at WARNING or above, unexpected events, non-zero exit codes and slow stops
are listed at the end. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from children import Child, read_lines
from measure import cpu_seconds, percentile, wait_drained
from phases import PHASES, add, per_batch, raw_phases, worker_phases
from scratch import run_with_scratch_database

from devservers import free_port, local_services
from outbox.primitives.urls import libpq_dsn

CHANNEL_PREFIX = "chat:message:bench-"
REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
RAW_LATENCY_POLL_MS = 10

LOAD_BACKLOG = """
    INSERT INTO outbox (type, key, payload)
    SELECT 'message.created', 'room-' || (i % 100), jsonb_build_object('text', 'hello', 'n', i)
    FROM generate_series(0, $1 - 1) AS i
"""
# Both subqueries are answered from the partial indexes (status = 'pending' / 'in_progress')
# when sequential scans are off on the polling connection: cheap enough to run every 20 ms.
STATUS_COUNTS = "SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status"
PRODUCE = """
    INSERT INTO outbox (type, key, payload) VALUES ('message.created', $1, $2::jsonb)
    RETURNING id
"""

RAW_CLAIM = """
    WITH c AS (
        SELECT id FROM outbox
        WHERE status = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox o
    SET status = 'in_progress', attempts = o.attempts + 1, locked_by = $2,
        locked_until = now() + interval '30 seconds'
    FROM c WHERE o.id = c.id
    RETURNING o.id, o.type, o.key, o.payload, o.created_at
"""
RAW_ACK = """
    UPDATE outbox SET status = 'published', published_at = now(), locked_by = NULL,
        locked_until = NULL
    WHERE id = ANY($1::bigint[])
"""

EXPECTED_EVENTS = {"worker.ready", "signal.received", "worker.stopping", "worker.stopped"}


# -- the raw loop (run in its own process with --raw-loop) ---------------------------------


def raw_envelope(row: Any) -> bytes:
    """The body ``workers.chat.envelope`` publishes, from a claimed row, by the same encoder
    (orjson), so that the comparison is between the runtimes, not JSON libraries."""
    return orjson.dumps(
        {
            "id": row["id"],
            "type": row["type"],
            "key": row["key"],
            "payload": row["payload"],
            "created_at": row["created_at"].isoformat(),
        }
    )


async def raw_loop(
    url: str, redis_url: str, channel: str, batch: int, worker_id: str, poll_ms: int
) -> None:
    """Claim, publish, ack; after an empty claim wait ``poll_ms``; until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conn = await asyncpg.connect(
        libpq_dsn(url), server_settings={"application_name": f"raw {worker_id}"}
    )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
    )
    redis = aioredis.Redis.from_url(redis_url)
    await redis.ping()
    print("ready", flush=True)
    spent = dict.fromkeys((*PHASES, "batches"), 0.0)
    clock = time.perf_counter
    try:
        while not stop.is_set():
            started = clock()
            rows = await conn.fetch(RAW_CLAIM, batch, worker_id)
            claimed = clock()
            spent["claim"] += claimed - started
            if rows:
                pipe = redis.pipeline(transaction=False)
                for row in rows:
                    pipe.publish(channel, raw_envelope(row))
                await pipe.execute()
                published = clock()
                await conn.execute(RAW_ACK, [row["id"] for row in rows])
                spent["publish"] += published - claimed
                spent["ack"] += clock() - published
                spent["batches"] += 1
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_ms / 1000)
                spent["wait"] += clock() - claimed
    finally:
        print("phases " + json.dumps(spent), flush=True)
        await redis.aclose()
        await conn.close()


# -- child processes -----------------------------------------------------------------------


@dataclass
class Bench:
    """Where everything runs: the scratch database, Redis and the channel."""

    url: str
    redis_url: str
    channel: str
    db: Any  # asyncpg connection for loading and polling (sequential scans off)
    subscriber: Subscriber


def worker_env(b: Bench, batch: int, worker_id: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() != "CONCURRENCY"}
    env.update(
        DATABASE_URL=b.url,
        REDIS_URL=b.redis_url,
        PUBSUB_CHANNEL=b.channel,
        BATCH_SIZE=str(batch),
        WORKER_ID=worker_id,
        # INFO, not WARNING: worker.ready is logged at INFO; nothing per batch is.
        LOG_LEVEL="INFO",
        **extra,
    )
    return env


async def start_worker(env: dict[str, str], name: str) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.chat",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Child(name, proc)
    ready = read_lines(child, proc.stderr, marker='"worker.ready"')
    child.readers.append(asyncio.create_task(ready))
    return child


async def start_raw(b: Bench, batch: int, name: str, poll_ms: int = 1000) -> Child:
    args = [__file__, "--raw-loop", b.url, b.redis_url, b.channel, str(batch), name]
    args += ["--poll-ms", str(poll_ms)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Child(name, proc)
    ready = read_lines(child, proc.stdout, marker="ready")
    child.readers.append(asyncio.create_task(ready))
    child.readers.append(asyncio.create_task(read_lines(child, proc.stderr)))
    return child


async def wait_ready(children: Sequence[Child]) -> None:
    """Wait for every child's ready signal; raise with its output if one exits first."""

    async def one(child: Child) -> None:
        ready = asyncio.create_task(child.ready.wait())
        exited = asyncio.create_task(child.proc.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not child.ready.is_set():
            await asyncio.gather(*child.readers)
            output = "\n".join(child.lines[-20:])
            raise RuntimeError(f"{child.name} exited before ready:\n{output}")

    await asyncio.wait_for(asyncio.gather(*(one(c) for c in children)), READY_TIMEOUT)


async def stop_children(children: Sequence[Child]) -> None:
    """SIGTERM each child still running; wait for it (kill after STOP_TIMEOUT)."""

    async def one(child: Child) -> None:
        started = time.perf_counter()
        if child.proc.returncode is None:
            child.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            PROBLEMS.append(
                f"{child.name}: still running {STOP_TIMEOUT:g} s after the stop; killed"
            )
            child.proc.kill()
            await child.proc.wait()
        child.stop_seconds = time.perf_counter() - started
        await asyncio.gather(*child.readers)

    await asyncio.gather(*(one(c) for c in children))


# -- what the processes said ---------------------------------------------------------------

PROBLEMS: list[str] = []


def _expected(line: str) -> bool:
    """An INFO JSON log line of start-up or shutdown, or a raw loop's own lines."""
    if line == "ready" or line.startswith("phases "):
        return True
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(event, dict)
        and event.get("level") == "info"
        and event.get("event") in EXPECTED_EVENTS
    )


def note_problems(run: str, children: Sequence[Child]) -> None:
    """Record log lines at WARNING+, unexpected events, bad exits and slow stops."""
    for child in children:
        for line in child.lines:
            if not _expected(line):
                PROBLEMS.append(f"{run} / {child.name}: {line}")
        if child.proc.returncode != 0:
            PROBLEMS.append(f"{run} / {child.name}: exit code {child.proc.returncode}")
        if child.stop_seconds is not None and child.stop_seconds > 2.0:
            PROBLEMS.append(f"{run} / {child.name}: took {child.stop_seconds:.1f} s to stop")


# -- CPU time ----------------------------------------------------------------------------

# The backends of the processes under test (application_name "outbox bench-...", "raw ...").
BENCH_BACKENDS = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND application_name LIKE '%bench-%'
"""


@dataclass
class CpuMeter:
    """CPU the children and their PostgreSQL backends used since :meth:`start`."""

    children: Sequence[Child]
    before: dict[int, float] = field(default_factory=dict)

    async def _pids(self, db: Any) -> tuple[list[int], list[int]]:
        backends = [row["pid"] for row in await db.fetch(BENCH_BACKENDS)]
        return [child.proc.pid for child in self.children], backends

    async def start(self, db: Any) -> None:
        processes, backends = await self._pids(db)
        self.before = {pid: cpu_seconds(pid) for pid in processes + backends}

    async def read(self, db: Any) -> tuple[float, float]:
        """(processes, backends) CPU seconds; backends opened since start count from 0."""
        processes, backends = await self._pids(db)

        def used(pids: list[int]) -> float:
            return sum(cpu_seconds(pid) - self.before.get(pid, 0.0) for pid in pids)

        return used(processes), used(backends)


# -- the Redis subscriber ------------------------------------------------------------------


class Subscriber:
    """Counts what arrives on ``channel``; keeps each envelope id's first receipt time.

    A second copy of an id with the same body is a repeat (the row was published again); with
    another body, or not an envelope at all, it is foreign (someone else's publisher).
    """

    def __init__(self, redis_url: str, channel: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub()
        self.channel = channel
        self.task: asyncio.Task[None] | None = None
        self.reset()

    async def start(self) -> None:
        await self.pubsub.subscribe(self.channel)
        while True:  # the confirmation: from here on nothing published is missed
            message = await self.pubsub.get_message(timeout=5.0)
            if message is not None and message["type"] == "subscribe":
                break
        self.task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self._record(message["data"], time.time())

    def _record(self, body: bytes, received: float) -> None:
        self.count += 1
        try:
            id_ = json.loads(body)["id"]
            first = self.bodies.get(id_)
        except (ValueError, KeyError, TypeError):
            self.foreign += 1
            return
        if first is None:
            self.bodies[id_] = body
            self.first_seen[id_] = received
        elif first == body:
            self.repeats += 1
        else:
            self.foreign += 1

    def reset(self) -> None:
        self.count = 0
        self.repeats = 0
        self.foreign = 0
        self.first_seen: dict[int, float] = {}
        self.bodies: dict[int, bytes] = {}

    def summary(self) -> str:
        return (
            f"received {self.count:,}: {len(self.first_seen):,} ids,"
            f" {self.repeats:,} repeats, {self.foreign:,} foreign"
        )

    async def settle(self, expected: int, within: float = 5.0) -> None:
        """Wait until ``expected`` messages arrived, or nothing arrives for half a second."""
        deadline = time.perf_counter() + within
        last, quiet_since = -1, time.perf_counter()
        while self.count < expected and time.perf_counter() < deadline:
            if self.count != last:
                last, quiet_since = self.count, time.perf_counter()
            elif time.perf_counter() - quiet_since > 0.5:
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pubsub.aclose()
        await self.client.aclose()


# -- drain throughput ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    kind: str  # "worker" or "raw"
    processes: int

    @property
    def label(self) -> str:
        return f"{self.kind} x{self.processes}"


VARIANTS = (Variant("worker", 1), Variant("raw", 1), Variant("worker", 2), Variant("raw", 2))


@dataclass
class DrainRun:
    rate: float | None  # None: did not finish in time
    seconds: float
    published: int
    received: int
    ids: int
    repeats: int
    foreign: int
    process_cpu: float  # seconds, the processes under test
    backend_cpu: float  # seconds, their PostgreSQL backends
    phases: dict[str, float] = field(default_factory=dict)  # see bench/phases.py

    def deliveries(self, rows: int) -> str:
        """``rows`` when each row arrived once, else what differed."""
        parts = [f"{self.ids:,}" + ("" if self.ids == rows else f" of {rows:,} ids")]
        if self.repeats:
            parts.append(f"+{self.repeats:,} repeats")
        if self.foreign:
            parts.append(f"+{self.foreign:,} foreign")
        return " ".join(parts)


async def load_backlog(db: Any, rows: int) -> None:
    await db.execute("TRUNCATE outbox RESTART IDENTITY")
    await db.execute(LOAD_BACKLOG, rows)
    await db.execute("VACUUM (ANALYZE) outbox")


async def hold_table(url: str) -> tuple[Any, Any]:
    """A connection holding ``EXCLUSIVE`` on outbox: reads pass, claims wait."""
    gate = await asyncpg.connect(libpq_dsn(url))
    transaction = gate.transaction()
    await transaction.start()
    await gate.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
    return gate, transaction


async def start_variant(b: Bench, variant: Variant, batch: int) -> list[Child]:
    names = [f"bench-{variant.kind}-{i + 1}" for i in range(variant.processes)]
    if variant.kind == "raw":
        return [await start_raw(b, batch, name) for name in names]
    children = []
    for name in names:
        port = free_port()
        extra = {"PUBSUB_MODE": "global", "POLL_INTERVAL_MS": "1000", "METRICS_PORT": str(port)}
        child = await start_worker(worker_env(b, batch, name, **extra), name)
        child.metrics_port = port
        children.append(child)
    return children


async def drain_once(b: Bench, variant: Variant, batch: int, rows: int) -> DrainRun:
    await load_backlog(b.db, rows)
    gate, transaction = await hold_table(b.url)
    children: list[Child] = []
    try:
        children = await start_variant(b, variant, batch)
        await wait_ready(children)
        b.subscriber.reset()
        cpu = CpuMeter(children)
        await cpu.start(b.db)
        started = time.perf_counter()
        await transaction.rollback()
        finished = await wait_drained(b.db, within=max(60.0, rows / 500))
        process_cpu, backend_cpu = await cpu.read(b.db)
        scraped = [
            await asyncio.to_thread(worker_phases, c.metrics_port)
            for c in children
            if c.metrics_port is not None
        ]
        await b.subscriber.settle(rows)
    finally:
        await gate.close()
        await stop_children(children)
    if variant.kind == "raw":
        scraped = [raw_phases(c.lines) for c in children]
    note_problems(f"drain batch={batch} {variant.label}", children)
    published = await b.db.fetchval("SELECT count(*) FROM outbox WHERE status = 'published'")
    if finished is None:
        counts = dict(await b.db.fetch(STATUS_COUNTS))
        PROBLEMS.append(f"drain batch={batch} {variant.label}: not drained in time: {counts}")
    seconds = (finished or time.perf_counter()) - started
    rate = rows / seconds if finished is not None else None
    s = b.subscriber
    deliveries = (s.count, len(s.first_seen), s.repeats, s.foreign)
    return DrainRun(rate, seconds, published, *deliveries, process_cpu, backend_cpu, add(scraped))


Results = dict[tuple[int, Variant], list[DrainRun]]


async def drain_section(b: Bench, batches: Sequence[int], rounds: int, rows: int) -> Results:
    print(f"drain throughput: {rows:,} pending rows per run, variants alternating\n")
    results: Results = {}
    for batch in batches:
        for round_ in range(1, rounds + 1):
            for variant in VARIANTS:
                run = await drain_once(b, variant, batch, rows)
                results.setdefault((batch, variant), []).append(run)
                rate = "did not finish" if run.rate is None else f"{run.rate:,.0f} rows/s"
                print(
                    f"  batch {batch:>4} {variant.label:<9} round {round_}: {rate:>15}"
                    f"  ({run.seconds:.2f} s; published {run.published:,};"
                    f" {b.subscriber.summary()}; CPU s: processes {run.process_cpu:.2f},"
                    f" PG backends {run.backend_cpu:.2f})",
                    flush=True,
                )
    return results


def median_rate(runs: Sequence[DrainRun]) -> float | None:
    rates = [r.rate for r in runs if r.rate is not None]
    return statistics.median(rates) if len(rates) == len(runs) else None


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def cpu_per_row(runs: Sequence[DrainRun], rows: int) -> str:
    """Median CPU microseconds per row: the processes / their PostgreSQL backends."""
    process = statistics.median(r.process_cpu for r in runs) / rows * 1e6
    backend = statistics.median(r.backend_cpu for r in runs) / rows * 1e6
    return f"{process:.0f} / {backend:.0f}"


def print_drain_table(results: Results, batches: Sequence[int], rounds: int, rows: int) -> None:
    heads = "".join(f"{f'round {i}':>10}" for i in range(1, rounds + 1))
    print(
        f"\n{'batch':>5}  {'variant':<10}{heads}{'median':>10}{'CPU us/row proc / PG':>22}"
        "  received per run (ids)"
    )
    for batch in batches:
        for variant in VARIANTS:
            runs = results[(batch, variant)]
            rates = "".join("{:>10}".format(f"{r.rate:,.0f}" if r.rate else "-") for r in runs)
            median = median_rate(runs)
            shown = "-" if median is None else f"{median:,.0f}"
            cpu = cpu_per_row(runs, rows)
            received = ", ".join(r.deliveries(rows) for r in runs)
            print(f"{batch:>5}  {variant.label:<10}{rates}{shown:>10}{cpu:>22}  {received}")
    print("\nratios of medians")
    heads = ("worker/raw x1", "worker/raw x2", "worker x2/x1", "raw x2/x1")
    print(f"{'batch':>5}" + "".join(f"{h:>15}" for h in heads))
    for batch in batches:
        m = {v: median_rate(results[(batch, v)]) for v in VARIANTS}
        w1, r1, w2, r2 = (m[v] for v in VARIANTS)
        figures = (ratio(w1, r1), ratio(w2, r2), ratio(w2, w1), ratio(r2, r1))
        print(f"{batch:>5}" + "".join(f"{f:>15}" for f in figures))
    print(
        "\nwhere the time goes, ms per batch (all rounds; a worker overlaps batches, so its"
        " figures add up to more than its wall time)"
    )
    print(f"{'batch':>5}  {'variant':<10}{'batches/s/process':>18}  " + " / ".join(PHASES))
    for batch in batches:
        for variant in VARIANTS:
            runs = results[(batch, variant)]
            totals = add(r.phases for r in runs)
            seconds = sum(r.seconds for r in runs) * variant.processes
            rate = totals["batches"] / seconds if seconds else 0.0
            print(f"{batch:>5}  {variant.label:<10}{rate:>18.1f}  {per_batch(totals)}")


# -- end-to-end latency --------------------------------------------------------------------


async def produce(url: str, rate: float, seconds: float) -> tuple[dict[int, float], float]:
    """Commit one row per transaction at ``rate``; return {id: commit time}, achieved rate."""
    conn = await asyncpg.connect(libpq_dsn(url))
    committed: dict[int, float] = {}
    total = round(rate * seconds)
    try:
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = json.dumps({"text": "hello", "n": i})
            row_id = await conn.fetchval(PRODUCE, f"room-{i % 100}", payload)
            committed[row_id] = time.time()
        achieved = total / (time.perf_counter() - start)
    finally:
        await conn.close()
    return committed, achieved


def latency_figures(committed: dict[int, float], seen: dict[int, float]) -> str:
    latencies = sorted((seen[i] - t) * 1000 for i, t in committed.items() if i in seen)
    if not latencies:
        return "nothing received"
    points = (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    return "  ".join(f"{name} {percentile(latencies, p):6.1f}" for name, p in points)


async def latency_once(
    b: Bench, label: str, start: Callable[[], Awaitable[Child]], rate: float, seconds: float
) -> None:
    await b.db.execute("TRUNCATE outbox RESTART IDENTITY")
    children = [await start()]
    try:
        await wait_ready(children)
        b.subscriber.reset()
        committed, achieved = await produce(b.url, rate, seconds)
        await b.subscriber.settle(len(committed))
    finally:
        await stop_children(children)
    note_problems(f"latency {label}", children)
    s = b.subscriber
    print(f"  {label}: sent {len(committed):,} ({achieved:,.0f}/s), {s.summary()}")
    print(f"    latency ms: {latency_figures(committed, s.first_seen)}", flush=True)


async def latency_section(b: Bench, rate: float, seconds: float) -> None:
    print(f"\nend-to-end latency: {rate:g} rows/s for {seconds:g} s, one commit per row\n")

    def worker() -> Awaitable[Child]:
        env = worker_env(b, 100, "bench-latency-worker")
        return start_worker(env, "bench-latency-worker")

    def raw() -> Awaitable[Child]:
        return start_raw(b, 100, "bench-latency-raw", RAW_LATENCY_POLL_MS)

    await latency_once(b, "chat worker (defaults, LISTEN)", worker, rate, seconds)
    label = f"raw loop (no LISTEN, {RAW_LATENCY_POLL_MS} ms poll)"
    await latency_once(b, label, raw, rate, seconds)


# -- main ----------------------------------------------------------------------------------


async def main(url: str, redis_url: str, args: argparse.Namespace) -> None:
    db = await asyncpg.connect(libpq_dsn(url))
    await db.execute("SET enable_seqscan = off")  # poll from the partial indexes
    subscriber = Subscriber(redis_url, args.channel)
    await subscriber.start()
    b = Bench(url, redis_url, args.channel, db, subscriber)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"channel {args.channel}; {os.cpu_count()} CPUs, load average {load}\n")
    try:
        results = await drain_section(b, args.batch, args.rounds, args.rows)
        print_drain_table(results, args.batch, args.rounds, args.rows)
        if args.latency_seconds > 0:
            await latency_section(b, args.rate, args.latency_seconds)
    finally:
        await subscriber.close()
        await db.close()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nworker / loop problems:" if PROBLEMS else "\nno worker / loop problems logged")
    for problem in PROBLEMS:
        print(f"  {problem}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--channel",
        default=CHANNEL_PREFIX + uuid.uuid4().hex[:8],
        help="Pub/Sub channel (default: a fresh chat:message:bench-*, so that nobody else's"
        " traffic on a shared Redis is counted or disturbed)",
    )
    parser.add_argument(
        "--raw-loop",
        nargs=5,
        metavar=("URL", "REDIS_URL", "CHANNEL", "BATCH", "ID"),
        help="internal: be one raw-loop process (the bench starts these itself)",
    )
    parser.add_argument("--poll-ms", type=int, default=1000, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.raw_loop:
        url, redis_url, channel, batch, worker_id = args.raw_loop
        asyncio.run(raw_loop(url, redis_url, channel, int(batch), worker_id, args.poll_ms))
        sys.exit(0)
    with local_services() as services:
        # run_with_scratch_database reads DATABASE_URL: point it at the server just chosen.
        os.environ["DATABASE_URL"] = services.database_url
        run_with_scratch_database(lambda url: main(url, services.redis_url, args))
