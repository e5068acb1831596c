"""Through a real PgBouncer in transaction pooling mode (Debian's, started here on a free
port): producers built with ``outbox.engine_options(url, pgbouncer=True)`` commit every
message exactly once, and the ``outbox`` command works every time (docs/operating.md,
"Behind PgBouncer").
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import outbox
from tests.components import pgbouncer
from tests.conftest import query

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent

CLIENTS = 8
TRANSACTIONS = 50
PER_TRANSACTION = 5  # CLIENTS x TRANSACTIONS x PER_TRANSACTION = 2,000 messages per driver


@pytest.fixture(scope="module")
def bounced_url(database_url: str) -> Iterator[str]:
    """The module's database through PgBouncer: 3 server connections for 8 clients."""
    with pgbouncer(database_url, pool_size=3) as url:
        yield url


def _doc_engines(bounced_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run docs/operating.md's example (its only Python block) with PgBouncer's URL; its
    globals (``engine``, ``sync_engine``)."""
    text = (ROOT / "docs" / "operating.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    monkeypatch.setenv("DATABASE_URL", bounced_url)
    namespace: dict[str, Any] = {}
    exec(example, namespace)
    return namespace


def _committed(database_url: str, type_: str) -> list[tuple[object, ...]]:
    """(client, n) of every committed row of ``type_``, read directly (not through PgBouncer)."""
    sql = "SELECT type, payload->>'client', payload->>'n' FROM outbox ORDER BY id"
    return [row[1:] for row in query(database_url, sql) if row[0] == type_]


def _expected() -> list[tuple[str, str]]:
    return [
        (str(client), str(n))
        for client in range(CLIENTS)
        for n in range(TRANSACTIONS * PER_TRANSACTION)
    ]


def test_async_producers_through_pgbouncer_commit_everything_once(
    database_url: str, bounced_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' asyncpg engine with ``engine_options(pgbouncer=True)``, 8 clients."""
    engine: AsyncEngine = _doc_engines(bounced_url, monkeypatch)["engine"]

    async def produce(client: int) -> None:
        for t in range(TRANSACTIONS):
            async with engine.begin() as conn:
                for i in range(PER_TRANSACTION):
                    n = t * PER_TRANSACTION + i
                    await outbox.enqueue(
                        conn, "pgb.async", {"client": client, "n": n}, key=str(client)
                    )

    async def main() -> None:
        try:
            await asyncio.gather(*(produce(client) for client in range(CLIENTS)))
        finally:
            await engine.dispose()

    asyncio.run(main())
    rows = _committed(database_url, "pgb.async")
    assert sorted(rows) == sorted(_expected())  # all, and each exactly once


def test_sync_psycopg_producers_through_pgbouncer_commit_everything_once(
    database_url: str, bounced_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' psycopg 3 (sync) engine, from 8 threads."""
    engine: Engine = _doc_engines(bounced_url, monkeypatch)["sync_engine"]

    def produce(client: int) -> None:
        for t in range(TRANSACTIONS):
            with engine.begin() as conn:
                outbox.enqueue_many(
                    conn,
                    [
                        outbox.NewMessage("pgb.sync", {"client": client, "n": n}, key=str(client))
                        for n in range(t * PER_TRANSACTION, (t + 1) * PER_TRANSACTION)
                    ],
                )
                # and one single enqueue per transaction, past psycopg's prepare threshold
                outbox.enqueue(conn, "pgb.sync.single", {"client": client, "n": t})

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(produce, range(CLIENTS)))
    finally:
        engine.dispose()
    assert sorted(_committed(database_url, "pgb.sync")) == sorted(_expected())
    singles = _committed(database_url, "pgb.sync.single")
    assert sorted(singles) == sorted(
        (str(c), str(t)) for c in range(CLIENTS) for t in range(TRANSACTIONS)
    )


def _outbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        env={**os.environ, "PYTHONWARNINGS": "error"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_outbox_command_works_through_pgbouncer_every_time(empty_database: str) -> None:
    """``outbox migrate`` (again and again), ``stats``, ``top``, ``dead list``: PgBouncer in
    transaction mode with one server connection, so every run meets what the previous run
    left on it."""
    with pgbouncer(empty_database, pool_size=1) as url:
        for run in range(2):
            done = _outbox("migrate", "--database-url", url)
            assert done.returncode == 0, f"run {run + 1}: {done.stderr}"
            assert "outbox_0" in done.stdout and "(head)" in done.stdout
        query(
            empty_database,
            "INSERT INTO outbox (type, payload, status, error)"
            " VALUES ('pgb.dead', '{}', 'dead', 'gave up')",
        )
        for args in (["stats"], ["top", "--iterations", "1"], ["dead", "list"], ["stats"]):
            done = _outbox(*args, "--database-url", url)
            assert done.returncode == 0, f"{args}: {done.stderr}"
            assert "pgb" in done.stdout or args[0] == "top", done.stdout
        done = _outbox("migrate", "--database-url", url)
        assert done.returncode == 0, done.stderr
