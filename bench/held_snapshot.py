"""Speed while vacuum cannot keep up: a held snapshot, or autovacuum off on the outbox.

    python bench/held_snapshot.py [--mode alternate|none,snapshot,no-autovacuum]
                                  [--hold 10] [--after 4] [--rate 500] [--rooms 200]
                                  [--explain-slower-than MS]

Each run starts its own throwaway PostgreSQL with production settings (``fsync``,
``synchronous_commit`` and autovacuum on) and a throwaway Redis, migrates, and starts 2 chat
workers (``ORDERING=key``, room mode, defaults) as ``reliability.soak`` does: producers
commit ``--rate`` messages a second (transactions of 10 rows over 4 connections, ``--rooms``
rooms), a subscriber measures commit -> arrival, and ``outbox purge published --older-than
2m`` runs every minute. For the first ``--hold`` minutes:

* ``snapshot``: a session holds a ``REPEATABLE READ`` transaction that has read the outbox
  table (``SELECT count(*) FROM outbox``), as ``pg_dump`` does: no dead tuple newer than its
  snapshot can be removed anywhere in the database;
* ``no-autovacuum``: ``ALTER TABLE outbox SET (autovacuum_enabled = false)`` (reset after);
* ``none``: nothing (the baseline).

then ``--after`` minutes with nothing held. ``alternate`` runs ``none``, ``snapshot`` and
``no-autovacuum`` one after another (never at the same time: the machine has 2 cores).

Printed per run and minute: produced and delivered msg/s, the outbox heap's and indexes'
size, live and dead tuples, autovacuum and checkpoint counts, lag p50/p99 (commit ->
subscriber), the workers' claim p50 and mean, rows purged. Then the checks the issue sets:
the last held minute within 2x of the first on claim p50 and lag p50; after the release, the
table stops growing within two vacuum cycles (no later minute more than 5 % above its size
two minutes after the release: the space vacuum frees is reused). Exit 0 if every run
passed, 1 if not.

``--explain-slower-than MS`` is for finding out why a minute was slow: the server then
writes ``postgresql.log`` into the run's log directory, with the plan (``auto_explain``, with
rows and buffers) of every statement slower than ``MS``, lock waits, autovacuum runs and
checkpoints. Measuring every statement makes all of them a little slower.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devservers import throwaway_postgres, throwaway_redis
from outbox.primitives.urls import async_database_url
from outbox.storage.migrate import upgrade
from reliability.fleet import Fleet
from reliability.options import at_least
from reliability.soak import HEADER, Minute, Soak

log = logging.getLogger("bench.held_snapshot")

SLOWDOWN_LIMIT = 2.0
REGROWTH_LIMIT = 1.05
MODES = ("none", "snapshot", "no-autovacuum")


def hold(mode: str, database_url: str, seconds: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """The task that makes vacuum fall behind for ``seconds`` (``mode``), then lets go."""

    async def held() -> None:
        if mode == "none":
            return
        engine = create_async_engine(async_database_url(database_url), pool_size=1)
        try:
            async with engine.connect() as conn:
                if mode == "snapshot":
                    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                    rows = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
                    log.info("snapshot taken (the outbox held %d rows)", rows)
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(seconds)
                        await conn.rollback()
                    log.info("snapshot released")
                else:
                    await conn.execute(text("ALTER TABLE outbox SET (autovacuum_enabled = false)"))
                    await conn.commit()
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(seconds)
                        await conn.execute(text("ALTER TABLE outbox RESET (autovacuum_enabled)"))
                        await conn.commit()
                    log.info("autovacuum on the outbox again")
        finally:
            await engine.dispose()

    return held


def diagnostics(log_dir: Path, slower_than_ms: float | None) -> dict[str, str]:
    """Server settings that log into ``log_dir`` what makes statements slow (none: none)."""
    if slower_than_ms is None:
        return {}
    log_dir.chmod(0o777)  # the server may run as another user
    return {
        "shared_preload_libraries": "auto_explain",
        "auto_explain.log_min_duration": f"{slower_than_ms:g}ms",
        "auto_explain.log_analyze": "on",
        "auto_explain.log_buffers": "on",
        "auto_explain.log_timing": "off",
        "log_lock_waits": "on",
        "log_autovacuum_min_duration": "0",
        "log_checkpoints": "on",
        "logging_collector": "on",
        "log_directory": str(log_dir),
        "log_filename": "postgresql.log",
        "log_line_prefix": "%m [%p] %a ",
    }


def run_once(mode: str, options: argparse.Namespace) -> list[Minute]:
    """One run on fresh servers; returns its minutes (printed as they come)."""
    minutes = options.hold + options.after
    soak_options = argparse.Namespace(
        minutes=minutes, rate=options.rate, rooms=options.rooms, retain="2m"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="outbox-held-snapshot-"))
    settings = diagnostics(log_dir, options.explain_slower_than)
    with (
        throwaway_postgres(durable=True, settings=settings) as database_url,
        throwaway_redis() as redis_url,
    ):
        upgrade(database_url)
        fleet = Fleet(database_url, redis_url, log_dir)
        try:
            fleet.start(chat_workers=2, document_workers=0, chat_env={})
            what = (
                "nothing held (the baseline)"
                if mode == "none"
                else f"held for minutes 1-{options.hold}, then {options.after} free"
            )
            print(
                f"\n## {mode}: {what}; {options.rate:g} msg/s over {options.rooms} rooms"
                f" (logs: {log_dir})\n",
                flush=True,
            )
            print(HEADER, flush=True)
            soak = Soak(soak_options, database_url, fleet)
            with start_blocking_portal() as portal:
                portal.call(soak.run, redis_url, [hold(mode, database_url, options.hold * 60)])
        finally:
            fleet.stop()
    return soak.minutes


def judge(mode: str, minutes: list[Minute], held_minutes: int) -> list[str]:
    """The issue's checks; lines starting ``FAIL`` are the problems."""
    if len(minutes) < held_minutes + 1:
        return [f"FAIL {mode}: the run ended after {len(minutes)} minutes"]
    first, last = minutes[0], minutes[held_minutes - 1]
    lines = []
    for attr, label in (("claim_p50", "claim p50"), ("lag_p50", "lag p50")):
        a, b = getattr(first, attr), getattr(last, attr)
        ratio = b / a if a > 0 else float("inf")
        verdict = "ok" if ratio <= SLOWDOWN_LIMIT else "FAIL"
        lines.append(
            f"{verdict} {mode}: {label} minute 1 {a * 1e3:.2f} ms, minute {held_minutes}"
            f" {b * 1e3:.2f} ms ({ratio:.2f}x, limit {SLOWDOWN_LIMIT:g}x)"
        )
    # Vacuum runs about once a minute (autovacuum_naptime): the table may grow for a cycle
    # or two after the release, then must stop (its freed space is reused).
    sizes = [m.table_mb + m.indexes_mb for m in minutes]
    settled = min(held_minutes + 2, len(minutes)) - 1
    after = max(sizes[settled:])
    verdict = "ok" if after <= sizes[settled] * REGROWTH_LIMIT else "FAIL"
    lines.append(
        f"{verdict} {mode}: table + indexes {sizes[held_minutes - 1]:.1f} MB at the release,"
        f" {sizes[settled]:.1f} MB two vacuum cycles later, at most {after:.1f} MB after that"
        f" (limit {REGROWTH_LIMIT:g}x), {sizes[-1]:.1f} MB at the end"
    )
    produced = min(m.produced for m in minutes[1:-1] or minutes)
    if produced < 0.95 * minutes[0].produced:
        lines.append(f"NOTE {mode}: a minute produced only {produced:,.0f} msg/s")
    return lines


def _modes(text: str) -> tuple[str, ...]:
    modes = MODES if text == "alternate" else tuple(text.split(","))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {unknown}: use alternate or {MODES}")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mode",
        type=_modes,
        default="alternate",
        help="alternate (none, snapshot, no-autovacuum), or one or more of those, comma-separated",
    )
    parser.add_argument("--hold", type=at_least(int, 2), default=10, help="minutes held (10)")
    parser.add_argument("--after", type=at_least(int, 1), default=4, help="minutes after (4)")
    parser.add_argument("--rate", type=at_least(float, 1), default=500.0, help="msg/s (500)")
    parser.add_argument("--rooms", type=at_least(int, 1), default=200, help="rooms (200)")
    parser.add_argument(
        "--explain-slower-than",
        type=at_least(float, 0),
        metavar="MS",
        help="log the plans of statements slower than MS (and lock waits, vacuums,"
        " checkpoints) to postgresql.log in the run's log directory",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stdout)
    for noisy in ("httpx", "alembic", "outbox.devservers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(f"# held snapshot bench, {time.strftime('%Y-%m-%d %H:%M')}, modes {options.mode}")
    lines: list[str] = []
    for mode in options.mode:
        judged = judge(mode, run_once(mode, options), options.hold)
        print("\n" + "\n".join(judged), flush=True)
        lines += judged
    print("\n## verdict\n" + "\n".join(lines), flush=True)
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
