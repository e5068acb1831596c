"""Document flow: the document worker against calling the sidecar directly, and latency.

    python bench/document_flow.py [--documents 2000] [--kb 4] [--batch 10] [--rounds 2]
                                  [--latency-seconds 10] [--rate 20]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL, in a scratch database
migrated with the reference ``documents`` / ``document_chunks`` tables. One sidecar
(``python -m sidecar`` on a free port, ``LOG_FORMAT=json``, default ``CHUNK_SIZE`` and
``CHUNK_OVERLAP``, its stderr in a temporary file) serves every run. Three parts:

1. **Drain throughput** (documents/s). ``--documents`` markdown documents of about ``--kb``
   KB each (generated headings, paragraphs, lists, emphasis and links; one user per 50
   documents) are inserted once, in one statement. Before each run the state is reset:
   ``TRUNCATE document_chunks``, every document back to ``pending`` (``updated_at =
   created_at``), ``TRUNCATE outbox`` and one ``INSERT ... SELECT`` of a
   ``document.preprocess.v1`` row per document, ``VACUUM ANALYZE``. Per round, alternating:

   * **worker**: one ``python -m workers.document`` (``BATCH_SIZE=--batch``, default
     ``CONCURRENCY`` = 2 x batch, ``POLL_INTERVAL_MS=1000``, LISTEN on). Until it logs
     ``worker.ready`` the bench holds an ``EXCLUSIVE`` lock on outbox (reads pass, claims
     wait), so it gets no head start; the clock starts when the lock is released and stops
     when no outbox row is ``pending`` or ``in_progress`` (polled every 20 ms).
   * **direct**: no outbox at all. The bench itself, with 2 x batch concurrent lanes, does
     what the worker's handler does per document, with the worker's own pieces: status
     ``processing`` (``workers.document_status.DocumentStatusStore``, a pool of the
     worker's size, min(2 x batch, 10)), the parse call (``workers.sidecar_client
     .SidecarClient``, as many connections as lanes), status ``processed``. The clock runs
     from the first call to the last answer. This is what the sidecar itself can do, the
     baseline the worker is compared with.

   Each run also shows how many documents ended ``processed``, the chunk rows written, the
   median server-side parse time (the sidecar's ``document.parsed`` log lines, whose
   ``duration_ms`` includes waiting for one of its 10 database connections), and CPU
   seconds used during the run (Linux ``/proc``) by the client (the worker process, or the
   bench process for direct), the sidecar, and the scratch database's PostgreSQL backends.
2. **End-to-end latency** at a fixed rate: the worker with its defaults (``BATCH_SIZE=10``,
   LISTEN on) and an empty database; a producer commits one document plus its outbox row
   per transaction (one statement) at ``--rate`` documents/s (absolute deadlines) for
   ``--latency-seconds``. Latency per document is ``updated_at - created_at`` once it is
   ``processed``, both from the database clock: ``created_at`` is ``clock_timestamp()`` at
   the insert, ``updated_at`` is set by the worker's final status ``UPDATE``. Also shown:
   the median server-side parse time over the same documents (the sidecar's share).
3. Environment: CPU count, load average, PostgreSQL version and settings, and the settings
   the bench used.

Worker and sidecar log lines at WARNING or above, unexpected events, non-zero exit codes and
slow stops are listed at the end. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from children import Child, read_lines
from measure import cpu_seconds, percentile, wait_drained
from scratch import run_with_scratch_database

from devservers import free_port
from outbox.primitives.urls import libpq_dsn
from workers.document_schema import DocumentStatus
from workers.document_status import DocumentColumns, DocumentStatusStore
from workers.sidecar_client import SidecarClient, SidecarError

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-sidecar-token"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
USERS = 40  # documents are spread over this many user ids

# -- SQL -----------------------------------------------------------------------------------

LOAD_DOCUMENTS = """
    INSERT INTO documents (user_id, title, content_type, content)
    SELECT u, t, 'text/markdown', c FROM unnest($1::text[], $2::text[], $3::bytea[]) AS d(u, t, c)
"""
RESET_DOCUMENTS = """
    UPDATE documents SET processing_status = 'pending', processing_error = NULL,
        updated_at = created_at
"""
ENQUEUE_ALL = """
    INSERT INTO outbox (type, key, payload)
    SELECT 'document.preprocess.v1', id::text,
        jsonb_build_object('documentId', id, 'userId', user_id)
    FROM documents ORDER BY title
"""
DOCUMENT_IDS = "SELECT id, user_id FROM documents ORDER BY title"
OUTBOX_COUNTS = "SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status"
OUTCOME = """
    SELECT (SELECT count(*) FROM documents WHERE processing_status = 'processed'),
           (SELECT count(*) FROM document_chunks)
"""
# One document and its outbox row, one statement, so one transaction in autocommit.
PRODUCE = """
    WITH d AS (
        INSERT INTO documents (user_id, title, content_type, content, created_at, updated_at)
        VALUES ($1, $2, 'text/markdown', $3, clock_timestamp(), clock_timestamp())
        RETURNING id, user_id
    )
    INSERT INTO outbox (type, key, payload)
    SELECT 'document.preprocess.v1', id::text,
        jsonb_build_object('documentId', id, 'userId', user_id)
    FROM d
"""
LATENCIES = """
    SELECT extract(epoch FROM updated_at - created_at) * 1000 AS ms, id
    FROM documents WHERE processing_status = 'processed' ORDER BY ms
"""
BENCH_BACKENDS = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
"""

# -- generated documents -------------------------------------------------------------------

WORDS = (
    "outbox",
    "transaction",
    "commit",
    "worker",
    "sidecar",
    "document",
    "chunk",
    "parse",
    "retry",
    "lease",
    "batch",
    "claim",
    "status",
    "pending",
    "processed",
    "index",
    "vacuum",
    "notify",
    "listen",
    "payload",
    "queue",
    "latency",
    "throughput",
    "replica",
    "snapshot",
    "isolation",
    "lock",
    "table",
    "column",
    "row",
    "schema",
    "migration",
    "heartbeat",
    "backoff",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "with",
    "on",
    "is",
    "are",
    "was",
    "be",
    "by",
    "this",
    "that",
    "from",
    "at",
    "as",
    "it",
    "not",
    "or",
    "which",
    "data",
    "system",
    "text",
    "embedding",
    "search",
    "result",
    "request",
    "answer",
    "server",
    "client",
    "process",
    "time",
)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    if rng.random() < 0.15:
        i = rng.randrange(len(words))
        words[i] = f"**{words[i]}**"
    if rng.random() < 0.1:
        i = rng.randrange(len(words))
        words[i] = f"[{words[i]}](https://example.com/{words[i]})"
    if rng.random() < 0.1:
        i = rng.randrange(len(words))
        words[i] = f"`{words[i]}`"
    return " ".join(words).capitalize() + rng.choice(".....?!")


def markdown_document(index: int, size: int) -> str:
    """About ``size`` bytes of markdown: a title, sections, paragraphs, now and then a list."""
    rng = random.Random(index)
    parts = [f"# Document {index}\n"]
    length = len(parts[0])
    section = 0
    while length < size:
        section += 1
        block = [f"## Section {section}: {rng.choice(WORDS)} {rng.choice(WORDS)}\n"]
        for _ in range(rng.randint(1, 3)):
            block.append(" ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) + "\n")
        if rng.random() < 0.3:
            block.append("\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(2, 4))) + "\n")
        text = "\n".join(block)
        parts.append(text)
        length += len(text) + 1
    return "\n".join(parts)[:size]


# -- child processes -----------------------------------------------------------------------

STARTED: list[asyncio.subprocess.Process] = []  # every child, to stop whatever happens
PROBLEMS: list[str] = []
EXPECTED_WORKER_EVENTS = {"worker.ready", "signal.received", "worker.stopping", "worker.stopped"}


def base_env(url: str) -> dict[str, str]:
    unset = {"CONCURRENCY", "BATCH_SIZE", "POLL_INTERVAL_MS", "LISTEN_NOTIFY", "METRICS_PORT"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in unset}
    env.update(DATABASE_URL=url, SIDECAR_TOKEN=TOKEN, LOG_FORMAT="json", LOG_LEVEL="INFO")
    return env


async def start_worker(url: str, sidecar: Sidecar, name: str, **extra: str) -> Child:
    env = base_env(url)
    env.update(SIDECAR_BASE_URL=sidecar.base_url, WORKER_ID=name, **extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.document",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    STARTED.append(proc)
    child = Child(name, proc)
    child.readers.append(
        asyncio.create_task(read_lines(child, proc.stderr, marker='"worker.ready"'))
    )
    return child


async def wait_ready(child: Child) -> None:
    """Wait for ``worker.ready``; raise with the worker's output if it exits first."""
    ready = asyncio.create_task(child.ready.wait())
    exited = asyncio.create_task(child.proc.wait())
    try:
        await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED")
    finally:
        ready.cancel()
        exited.cancel()
    if not child.ready.is_set():
        output = "\n".join(child.lines[-20:])
        raise RuntimeError(f"{child.name} not ready (exit code {child.proc.returncode}):\n{output}")


async def stop_process(proc: asyncio.subprocess.Process, name: str) -> float:
    """SIGTERM (kill after STOP_TIMEOUT); the seconds it took to exit."""
    started = time.perf_counter()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        PROBLEMS.append(f"{name}: still running {STOP_TIMEOUT:g} s after SIGTERM; killed")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    return time.perf_counter() - started


async def stop_worker(child: Child) -> None:
    child.stop_seconds = await stop_process(child.proc, child.name)
    await asyncio.gather(*child.readers)


def note_worker_problems(run: str, child: Child) -> None:
    """Record log lines other than INFO start-up/shutdown, bad exits and slow stops."""
    for line in child.lines:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not (
            isinstance(event, dict)
            and event.get("level") == "info"
            and event.get("event") in EXPECTED_WORKER_EVENTS
        ):
            PROBLEMS.append(f"{run} / {child.name}: {line}")
    if child.proc.returncode != 0:
        PROBLEMS.append(f"{run} / {child.name}: exit code {child.proc.returncode}")
    if child.stop_seconds is not None and child.stop_seconds > 2.0:
        PROBLEMS.append(f"{run} / {child.name}: took {child.stop_seconds:.1f} s to stop")


@dataclass
class Sidecar:
    """The one sidecar process; its JSON log goes to ``log_path``."""

    proc: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    seen: int = 0  # how far parsed_since has read

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def parsed_since(self, offset: int, run: str) -> dict[str, float]:
        """``{document id: duration_ms}`` of the ``document.parsed`` lines after ``offset``;
        other lines at WARNING+ or about parses go to PROBLEMS."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        self.seen = offset + len(data)
        durations: dict[str, float] = {}
        for raw in data.splitlines():
            line = raw.decode(errors="replace")
            try:
                event = json.loads(line)
            except ValueError:
                PROBLEMS.append(f"{run} / sidecar: {line}")
                continue
            if event.get("event") == "document.parsed":
                durations[str(event.get("id"))] = float(event["duration_ms"])
            elif event.get("level") != "info" or "parse" in str(event.get("event")):
                PROBLEMS.append(f"{run} / sidecar: {line}")
        return durations


def _text_of(path: Path) -> str:
    return path.read_text(errors="replace")


async def start_sidecar(url: str, log_path: Path) -> Sidecar:
    port = free_port()
    env = base_env(url)
    env.update(SIDECAR_PORT=str(port), SIDECAR_HOST="127.0.0.1")
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    STARTED.append(proc)
    sidecar = Sidecar(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.perf_counter() + READY_TIMEOUT
    async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=2.0) as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"sidecar exited {proc.returncode}:\n{_text_of(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    sidecar.parsed_since(0, "sidecar start-up")
                    return sidecar
            if time.perf_counter() > deadline:
                raise RuntimeError(f"sidecar not healthy in time:\n{_text_of(log_path)}")
            await asyncio.sleep(0.1)


# -- CPU time ----------------------------------------------------------------------------


@dataclass
class CpuMeter:
    """CPU seconds since :meth:`start` of the client process, the sidecar and the scratch
    database's backends (other than the polling connection; new ones count from 0)."""

    client_pid: int
    sidecar_pid: int
    before: dict[int, float] = field(default_factory=dict)

    async def start(self, db: Any) -> None:
        backends = [row["pid"] for row in await db.fetch(BENCH_BACKENDS)]
        pids = [self.client_pid, self.sidecar_pid, *backends]
        self.before = {pid: cpu_seconds(pid) for pid in pids}

    async def read(self, db: Any) -> tuple[float, float, float]:
        backends = [row["pid"] for row in await db.fetch(BENCH_BACKENDS)]

        def used(pid: int) -> float:
            return cpu_seconds(pid) - self.before.get(pid, 0.0)

        return used(self.client_pid), used(self.sidecar_pid), sum(map(used, backends))


# -- drain throughput ----------------------------------------------------------------------


@dataclass
class Bench:
    url: str
    db: Any  # asyncpg connection for loading and polling (sequential scans off)
    sidecar: Sidecar
    batch: int
    documents: int

    @property
    def concurrency(self) -> int:
        return 2 * self.batch


@dataclass
class DrainRun:
    rate: float | None  # None: did not finish in time
    seconds: float
    processed: int
    chunks: int
    parse_ms: float | None  # median server-side parse time
    cpu: tuple[float, float, float]  # client, sidecar, PG backends

    def line(self) -> str:
        rate = "did not finish" if self.rate is None else f"{self.rate:,.1f} docs/s"
        parse = "-" if self.parse_ms is None else f"{self.parse_ms:.1f}"
        client, sidecar, backends = self.cpu
        return (
            f"{rate:>15}  ({self.seconds:.2f} s; processed {self.processed:,},"
            f" {self.chunks:,} chunks; sidecar parse median {parse} ms;"
            f" CPU s: client {client:.2f}, sidecar {sidecar:.2f}, PG {backends:.2f})"
        )


async def load_documents(db: Any, count: int, kb: float) -> None:
    size = round(kb * 1024)
    users = [f"user-{i % USERS}" for i in range(count)]
    titles = [f"doc-{i:06d}" for i in range(count)]
    contents = [markdown_document(i, size).encode() for i in range(count)]
    await db.execute(LOAD_DOCUMENTS, users, titles, contents)


async def reset_state(db: Any, *, enqueue: bool) -> None:
    """Chunks gone, documents pending, and (``enqueue``) one pending outbox row each."""
    await db.execute("TRUNCATE document_chunks")
    await db.execute(RESET_DOCUMENTS)
    await db.execute("TRUNCATE outbox RESTART IDENTITY")
    if enqueue:
        await db.execute(ENQUEUE_ALL)
    await db.execute("VACUUM (ANALYZE) documents, document_chunks, outbox")


async def finish_run(
    b: Bench, run: str, started: float, finished: float | None, cpu: tuple[float, ...], log: int
) -> DrainRun:
    processed, chunks = await b.db.fetchrow(OUTCOME)
    parsed = b.sidecar.parsed_since(log, run)
    parse_ms = statistics.median(parsed.values()) if parsed else None
    seconds = (finished or time.perf_counter()) - started
    rate = b.documents / seconds if finished is not None else None
    client, sidecar, backends = cpu
    return DrainRun(rate, seconds, processed, chunks, parse_ms, (client, sidecar, backends))


async def worker_once(b: Bench, run: str) -> DrainRun:
    await reset_state(b.db, enqueue=True)
    log = b.sidecar.log_offset()
    gate = await asyncpg.connect(libpq_dsn(b.url))
    child: Child | None = None
    try:
        transaction = gate.transaction()
        await transaction.start()
        await gate.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
        child = await start_worker(
            b.url,
            b.sidecar,
            "bench-document-worker",
            BATCH_SIZE=str(b.batch),
            POLL_INTERVAL_MS="1000",
        )
        await wait_ready(child)
        cpu = CpuMeter(child.proc.pid, b.sidecar.proc.pid)
        await cpu.start(b.db)
        started = time.perf_counter()
        await transaction.rollback()
        finished = await wait_drained(b.db, within=max(60.0, b.documents / 10))
        used = await cpu.read(b.db)
    finally:
        await gate.close()
        if child is not None:
            await stop_worker(child)
    note_worker_problems(run, child)
    if finished is None:
        counts = dict(await b.db.fetch(OUTBOX_COUNTS))
        PROBLEMS.append(f"{run}: not drained in time: {counts}")
    return await finish_run(b, run, started, finished, used, log)


async def direct_once(b: Bench, run: str) -> DrainRun:
    await reset_state(b.db, enqueue=False)
    documents = [(row["id"], row["user_id"]) for row in await b.db.fetch(DOCUMENT_IDS)]
    log = b.sidecar.log_offset()
    failures: list[str] = []
    # The worker's own pieces, without the outbox: its status store and sidecar client.
    store = DocumentStatusStore(
        b.url, DocumentColumns(), max_connections=min(b.concurrency, 10), timeout=30.0
    )
    client = SidecarClient(
        b.sidecar.base_url, token=TOKEN, timeout=60.0, max_connections=b.concurrency
    )
    queue = iter(enumerate(documents))  # shared by the lanes (next() never awaits)

    async def lane() -> None:
        for n, (document_id, user_id) in queue:
            await store.set_status(document_id, DocumentStatus.PROCESSING, user_id)
            try:
                await client.parse(document_id, user_id, idempotency_key=str(n + 1))
            except SidecarError as exc:
                failures.append(f"{document_id}: {exc}")
                continue
            await store.set_status(document_id, DocumentStatus.PROCESSED, user_id)

    try:
        await client.check()  # as the worker's start-up check
        await store.check()
        cpu = CpuMeter(os.getpid(), b.sidecar.proc.pid)
        await cpu.start(b.db)
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(b.concurrency)))
        finished = time.perf_counter()
        used = await cpu.read(b.db)
    finally:
        await client.aclose()
        await store.aclose()
    PROBLEMS.extend(f"{run}: {failure}" for failure in failures[:10])
    if len(failures) > 10:
        PROBLEMS.append(f"{run}: ... {len(failures) - 10} more failed calls")
    return await finish_run(b, run, started, finished, used, log)


VARIANTS = ("worker", "direct")


async def drain_section(b: Bench, rounds: int) -> dict[str, list[DrainRun]]:
    print(
        f"drain throughput: {b.documents:,} documents per run, batch {b.batch},"
        f" concurrency {b.concurrency}, variants alternating\n"
    )
    results: dict[str, list[DrainRun]] = {v: [] for v in VARIANTS}
    for round_ in range(1, rounds + 1):
        for variant in VARIANTS:
            run = f"drain {variant} round {round_}"
            once = worker_once if variant == "worker" else direct_once
            result = await once(b, run)
            results[variant].append(result)
            print(f"  {variant:<6} round {round_}: {result.line()}", flush=True)
    return results


def median_rate(runs: Sequence[DrainRun]) -> float | None:
    rates = [r.rate for r in runs if r.rate is not None]
    return statistics.median(rates) if rates and len(rates) == len(runs) else None


def print_drain_table(results: dict[str, list[DrainRun]], rounds: int, documents: int) -> None:
    heads = "".join(f"{f'round {i}':>10}" for i in range(1, rounds + 1))
    print(f"\n{'variant':<8}{heads}{'median':>10}   docs/s;  CPU ms/doc client / sidecar / PG")
    for variant in VARIANTS:
        runs = results[variant]
        rates = "".join("{:>10}".format(f"{r.rate:,.1f}" if r.rate else "-") for r in runs)
        median = median_rate(runs)
        shown = "-" if median is None else f"{median:,.1f}"
        cpu = " / ".join(
            f"{statistics.median(r.cpu[i] for r in runs) / documents * 1000:.2f}" for i in range(3)
        )
        print(f"{variant:<8}{rates}{shown:>10}   {cpu}")
    per_round = []
    for worker, direct in zip(results["worker"], results["direct"], strict=True):
        ok = worker.rate is not None and direct.rate
        per_round.append(f"{worker.rate / direct.rate:.2f}" if ok else "-")
    w, d = median_rate(results["worker"]), median_rate(results["direct"])
    of_medians = f"{w / d:.2f}" if w is not None and d else "-"
    print(f"\nworker/direct ratio: per round {', '.join(per_round)}; of medians {of_medians}")


# -- end-to-end latency --------------------------------------------------------------------


async def produce(url: str, rate: float, seconds: float, kb: float) -> tuple[int, float]:
    """Commit one document + outbox row per transaction at ``rate``; (sent, achieved rate)."""
    size = round(kb * 1024)
    total = round(rate * seconds)
    bodies = [markdown_document(1_000_000 + i, size).encode() for i in range(total)]
    conn = await asyncpg.connect(libpq_dsn(url))
    try:
        start = time.perf_counter()
        for i, body in enumerate(bodies):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await conn.execute(PRODUCE, f"user-{i % USERS}", f"live-{i:06d}", body)
        achieved = total / (time.perf_counter() - start)
    finally:
        await conn.close()
    return total, achieved


async def latency_section(b: Bench, rate: float, seconds: float, kb: float) -> None:
    print(
        f"\nend-to-end latency: {rate:g} documents/s for {seconds:g} s, one commit per"
        " document; worker with its defaults (BATCH_SIZE 10, LISTEN on)\n"
    )
    run = "latency"
    await b.db.execute("TRUNCATE outbox RESTART IDENTITY")
    await b.db.execute("TRUNCATE documents CASCADE")
    await b.db.execute("VACUUM (ANALYZE) documents, document_chunks, outbox")
    log = b.sidecar.log_offset()
    child = await start_worker(b.url, b.sidecar, "bench-latency-worker")
    try:
        await wait_ready(child)
        sent, achieved = await produce(b.url, rate, seconds, kb)
        finished = await wait_drained(b.db, within=60.0)
    finally:
        await stop_worker(child)
    note_worker_problems(run, child)
    if finished is None:
        counts = dict(await b.db.fetch(OUTBOX_COUNTS))
        PROBLEMS.append(f"{run}: not drained in time: {counts}")
    rows = await b.db.fetch(LATENCIES)
    parsed = b.sidecar.parsed_since(log, run)
    print(f"  sent {sent:,} ({achieved:,.1f}/s), processed {len(rows):,}")
    if not rows:
        return
    latencies = [float(row["ms"]) for row in rows]
    points = (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    figures = "  ".join(f"{name} {percentile(latencies, p):7.1f}" for name, p in points)
    print(f"  latency ms (updated_at - created_at): {figures}")
    if parsed:
        ordered = sorted(parsed.values())
        parse = "  ".join(f"{name} {percentile(ordered, p):7.1f}" for name, p in points)
        share = statistics.median(ordered) / statistics.median(latencies)
        print(f"  sidecar parse ms (server side, {len(ordered):,} calls): {parse}")
        print(f"  sidecar share of the median: {share:.0%} (median parse / median latency)")


# -- main ----------------------------------------------------------------------------------


async def environment(db: Any, args: argparse.Namespace) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    version = await db.fetchval("SELECT version()")
    settings = await db.fetch(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name",
        ["shared_buffers", "synchronous_commit", "fsync", "max_connections", "work_mem"],
    )
    pg = ", ".join(f"{r['name']}={r['setting']}{r['unit'] or ''}" for r in settings)
    print(f"{os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}")
    print(f"{version}")
    print(f"PostgreSQL settings: {pg}")
    print(
        f"bench: --documents {args.documents} --kb {args.kb:g} --batch {args.batch}"
        f" --rounds {args.rounds} --latency-seconds {args.latency_seconds:g}"
        f" --rate {args.rate:g}"
    )
    print(
        f"worker: BATCH_SIZE={args.batch} (drain) / default 10 (latency), CONCURRENCY"
        " default (2 x batch), POLL_INTERVAL_MS=1000, LISTEN on, LOG_FORMAT=json;"
        " direct: 2 x batch lanes"
    )
    print(
        "sidecar: one process, CHUNK_SIZE=1000, CHUNK_OVERLAP=200 (defaults), its pool of 10"
        " connections, LOG_FORMAT=json LOG_LEVEL=INFO"
    )


async def main(url: str, args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM like Ctrl-C: unwind, stopping the children on the way
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    db = await asyncpg.connect(libpq_dsn(url))
    await db.execute("SET enable_seqscan = off")  # poll from the partial indexes
    with tempfile.TemporaryDirectory(prefix="document-flow-") as tmp:
        sidecar: Sidecar | None = None
        try:
            await environment(db, args)
            started = time.perf_counter()
            await load_documents(db, args.documents, args.kb)
            size = await db.fetchval("SELECT avg(octet_length(content)) FROM documents")
            print(
                f"\nloaded {args.documents:,} markdown documents, {float(size or 0):,.0f} bytes"
                f" on average, in {time.perf_counter() - started:.1f} s"
            )
            sidecar = await start_sidecar(url, Path(tmp) / "sidecar.log")
            print(f"sidecar at {sidecar.base_url} (pid {sidecar.proc.pid})\n")
            b = Bench(url, db, sidecar, args.batch, args.documents)
            if args.rounds > 0 and args.documents > 0:
                results = await drain_section(b, args.rounds)
                print_drain_table(results, args.rounds, args.documents)
            if args.latency_seconds > 0:
                await latency_section(b, args.rate, args.latency_seconds, args.kb)
        finally:
            for proc in STARTED:  # whatever is still running (an error, Ctrl-C)
                if proc.returncode is None:
                    await stop_process(proc, f"pid {proc.pid}")
            await db.close()
        if sidecar is not None:
            sidecar.parsed_since(sidecar.seen, "after the runs")  # its shutdown lines
            if sidecar.proc.returncode != 0:
                PROBLEMS.append(f"sidecar: exit code {sidecar.proc.returncode}")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nworker / sidecar problems:" if PROBLEMS else "\nno worker / sidecar problems logged")
    for problem in PROBLEMS:
        print(f"  {problem}")


def kill_leftovers() -> None:
    """Last resort after the event loop is gone: SIGKILL children never seen to exit."""
    for proc in STARTED:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--kb", type=float, default=4.0, help="size of each document, KB")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="documents/s (latency)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    try:
        run_with_scratch_database(lambda url: main(url, args), documents=True)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        kill_leftovers()
