"""The chat worker as a real subprocess, against real PostgreSQL and real Redis."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devservers import (
    LocalServices,
    free_port,
    start_throwaway,
    stop_throwaway,
    throwaway_postgres,
    throwaway_redis,
)
from outbox import NewMessage, async_database_url, enqueue, enqueue_many
from outbox.runtime.runner import EXIT_BAD_SETTINGS, EXIT_UNREACHABLE
from outbox.storage.migrate import upgrade
from tests.workerproc import (
    WorkerProcess,
    run_to_exit,
    subscribed,
    wait_until,
)

pytestmark = pytest.mark.anyio

CHAT = "workers.chat"
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def base_env(database_url: str, services: LocalServices) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": services.redis_url,
        "LOCK_SECONDS": "5",
        "REAP_INTERVAL_SECONDS": "0.5",
        "POLL_INTERVAL_MS": "200",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }


@pytest.fixture
def start_worker(base_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Start chat workers (``**env`` overrides); every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*, ready: bool = True, **env: str) -> WorkerProcess:
        name = f"chat-{len(started)}"
        worker = WorkerProcess(
            CHAT, {**base_env, "WORKER_ID": name, **env}, tmp_path / f"{name}.log"
        )
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


async def add_chat(engine: AsyncEngine, count: int, key: str = "room-1") -> list[int]:
    async with engine.begin() as conn:
        messages = [NewMessage("message.created", {"n": n}, key=key) for n in range(count)]
        return await enqueue_many(conn, messages)


async def table(engine: AsyncEngine) -> dict[int, tuple[str, int, str | None]]:
    """id -> (status, attempts, error)."""
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT id, status, attempts, error FROM outbox"))
        return {row.id: (row.status, row.attempts, row.error) for row in result}


async def wait_all_published(engine: AsyncEngine, timeout: float = 10) -> None:
    """Delivery comes before the ack: wait for the ack too."""

    async def published() -> bool:
        return {status for status, _, _ in (await table(engine)).values()} == {"published"}

    await wait_until(published, timeout, "every row to be published")


# -- delivery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["global", "room"])
async def test_committed_rows_arrive_with_the_envelope_and_documents_are_left_alone(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker, mode: str
) -> None:
    room_a, room_b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    pattern = "chat:message" if mode == "global" else "conv:*"
    start_worker(PUBSUB_MODE=mode)
    async with subscribed(services.redis_url, pattern) as received:
        async with engine.begin() as conn:
            first = await enqueue(conn, "message.created", {"text": "hi"}, key=room_a)
            doc = await enqueue(conn, "document.preprocess.v1", {"documentId": "d1"})
            second = await enqueue(conn, "room.updated", {"title": "ü"}, key=room_b)
        async with engine.begin() as conn:  # rolled back: never delivered
            await enqueue(conn, "message.created", {"text": "never"}, key=room_a)
            await conn.rollback()
        await received.wait_for_ids([first, second], timeout=10)
        await anyio.sleep(0.3)  # time enough for a wrongly published third row to show

    assert sorted(received.ids) == [first, second]
    by_id = {envelope["id"]: (channel, envelope) for channel, envelope, _ in received.items}
    channel, envelope = by_id[first]
    assert channel == ("chat:message" if mode == "global" else f"conv:{room_a}")
    assert set(envelope) == {"id", "type", "key", "seq", "payload", "created_at"}
    assert envelope["type"] == "message.created"
    assert envelope["key"] == room_a
    assert isinstance(envelope["seq"], int)  # ORDERING=key is the chat worker's default
    assert envelope["payload"] == {"text": "hi"}
    assert by_id[second][1]["payload"] == {"title": "ü"}
    await wait_until(lambda: _published(engine, first, second), 10, "the acks")
    rows = await table(engine)
    assert rows[first] == ("published", 1, None)
    assert rows[second] == ("published", 1, None)
    assert rows[doc] == ("pending", 0, None)


async def _published(engine: AsyncEngine, *ids: int) -> bool:
    rows = await table(engine)
    return all(rows[i][0] == "published" for i in ids)


async def test_room_mode_gives_up_a_message_without_a_key(
    engine: AsyncEngine, start_worker: StartWorker
) -> None:
    start_worker(PUBSUB_MODE="room")
    async with engine.begin() as conn:
        keyless = await enqueue(conn, "message.created", {"text": "x"})
        keyed = await enqueue(conn, "message.created", {"text": "y"}, key="r")

    async def settled() -> bool:
        rows = await table(engine)
        return rows[keyless][0] == "dead" and rows[keyed][0] == "published"

    await wait_until(settled, 10, "the keyless message to go dead")
    _, attempts, error = (await table(engine))[keyless]
    assert attempts == 1
    assert error is not None and "needs a key" in error


async def acl_user(redis_url: str, name: str, *rules: str) -> str:
    """Create the Redis ACL user ``name`` (password ``pw``) with ``rules``; its URL."""
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules)
    finally:
        await admin.aclose()
    return redis_url.replace("redis://", f"redis://{name}:pw@", 1)


async def test_a_forbidden_channel_fails_its_messages_alone(
    engine: AsyncEngine, base_env: dict[str, str], tmp_path: Path
) -> None:
    with throwaway_redis() as redis_url:
        url = await acl_user(
            redis_url, "chat", "~*", "resetchannels", "&conv:allowed*", "+publish", "+@connection"
        )
        env = {**base_env, "REDIS_URL": url, "PUBSUB_MODE": "room", "WORKER_ID": "chat-acl"}
        worker = WorkerProcess(CHAT, env, tmp_path / "acl.log")
        try:
            worker.wait_ready()
            rooms = ["allowed-1", "forbidden", "allowed-2"]
            async with subscribed(redis_url, "conv:*") as received:
                async with engine.begin() as conn:
                    ids = await enqueue_many(
                        conn,
                        [
                            NewMessage("message.created", {"n": n}, key=rooms[n % 3])
                            for n in range(30)
                        ],
                    )
                allowed = [i for n, i in enumerate(ids) if n % 3 != 1]
                await received.wait_for_ids(allowed, timeout=10)

                async def settled() -> bool:
                    return "in_progress" not in {s for s, _, _ in (await table(engine)).values()}

                await wait_until(settled, 10, "every message to settle")
            assert sorted(received.ids) == allowed
        finally:
            worker.stop()
    rows = await table(engine)
    assert {rows[i][:2] for i in allowed} == {("published", 1)}
    forbidden = [i for n, i in enumerate(ids) if n % 3 == 1]
    assert {rows[i][:2] for i in forbidden} == {("dead", 1)}
    error = rows[forbidden[0]][2]
    assert error is not None and "Redis refused channel 'conv:forbidden'" in error, error
    assert "NOPERM" in error
    assert not worker.events("transport.unavailable"), "a forbidden channel is not an outage"


async def test_an_idle_worker_is_woken_by_the_commit_not_the_poll(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker
) -> None:
    start_worker(POLL_INTERVAL_MS="5000")
    await anyio.sleep(0.3)  # idle: its next poll is ~5 s away
    async with subscribed(services.redis_url, "chat:message") as received:
        committed = time.monotonic()
        (row,) = await add_chat(engine, 1)
        await received.wait_for_ids([row], timeout=10)
    latency = received.items[0][2] - committed
    assert latency < 1.0, f"took {latency:.3f}s: the notification did not wake the worker"


@pytest.mark.parametrize(
    "env",
    [{"LISTEN_NOTIFY": "false"}, {"PGBOUNCER_TRANSACTION_MODE": "true"}],
    ids=["poll-only", "pgbouncer"],
)
async def test_poll_only_modes_deliver_without_listen(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker, env: dict[str, str]
) -> None:
    worker = start_worker(POLL_INTERVAL_MS="100", **env)
    assert worker.events("worker.ready")[0]["listen"] is False
    async with subscribed(services.redis_url, "chat:message") as received:
        ids = await add_chat(engine, 5)
        await received.wait_for_ids(ids, timeout=10)
    await wait_all_published(engine)


# -- shutdown and crashes ---------------------------------------------------------------------


async def wait_for_some_published(engine: AsyncEngine) -> None:
    async def some() -> bool:
        async with engine.connect() as conn:
            n = await conn.scalar(text("SELECT count(*) FROM outbox WHERE status = 'published'"))
        return bool(n)

    await wait_until(some, 20, "the first published rows")


async def test_sigterm_mid_drain_exits_zero_and_loses_nothing(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker
) -> None:
    ids = await add_chat(engine, 6_000)
    async with subscribed(services.redis_url, "chat:message") as received:
        worker = start_worker(BATCH_SIZE="100")
        await wait_for_some_published(engine)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=5 + 5) == 0, worker.log
        assert worker.events("worker.stopped")

        after_stop = await table(engine)
        statuses = {status for status, _, _ in after_stop.values()}
        assert "in_progress" not in statuses, "a claimed row was left leased at shutdown"
        waiting = [i for i, (status, _, _) in after_stop.items() if status == "pending"]
        assert waiting, "the drain finished before SIGTERM; the test proves nothing"
        assert {after_stop[i][1] for i in waiting} == {0}, "an unstarted row lost an attempt"

        start_worker(BATCH_SIZE="500")
        await received.wait_for_ids(ids, timeout=60)
    await wait_all_published(engine)
    final = await table(engine)
    assert {attempts for _, attempts, _ in final.values()} == {1}


async def test_sigkill_mid_drain_every_row_arrives_after_the_lease_expires(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker
) -> None:
    ids = await add_chat(engine, 6_000)
    async with subscribed(services.redis_url, "chat:message") as received:
        victim = start_worker(BATCH_SIZE="100", LOCK_SECONDS="1")
        await wait_for_some_published(engine)
        victim.signal(signal.SIGKILL)
        victim.wait(timeout=10)
        at_kill = await table(engine)
        leased = {i for i, (status, _, _) in at_kill.items() if status == "in_progress"}

        start_worker(BATCH_SIZE="500", LOCK_SECONDS="1")
        await received.wait_for_ids(ids, timeout=60)
    await wait_all_published(engine)
    final = await table(engine)
    assert all(final[i][1] == 2 for i in leased), "reaped rows should show the crashed attempt"


async def test_redis_outage_longer_than_all_attempts_burns_none(
    engine: AsyncEngine, base_env: dict[str, str], tmp_path: Path
) -> None:
    with throwaway_redis() as redis_url:
        env = {
            **base_env,
            "REDIS_URL": redis_url,
            "MAX_ATTEMPTS": "2",
            "BACKOFF_BASE_SECONDS": "0.05",
            "TRANSPORT_RETRY_MAX_SECONDS": "0.8",
            "REDIS_TIMEOUT_SECONDS": "1",
            "WORKER_ID": "chat-outage",
        }
        worker = WorkerProcess(CHAT, env, tmp_path / "outage.log")
        try:
            worker.wait_ready()
            stop_throwaway(redis_url)
            ids = await add_chat(engine, 50)
            deadline = time.monotonic() + 30
            while len(worker.events("transport.unavailable")) < 4:  # > MAX_ATTEMPTS tries
                assert time.monotonic() < deadline, worker.log
                await anyio.sleep(0.05)
            during = await table(engine)
            assert {status for status, _, _ in during.values()} <= {"pending", "in_progress"}
            assert max(attempts for _, attempts, _ in during.values()) <= 1

            start_throwaway(redis_url)
            async with subscribed(redis_url, "chat:message") as received:
                await received.wait_for_ids(ids, timeout=30)
            await wait_all_published(engine)
            assert worker.events("transport.recovered")
        finally:
            worker.stop()
    final = await table(engine)
    assert sorted(final) == sorted(ids)
    assert {(status, attempts) for status, attempts, _ in final.values()} == {("published", 1)}


async def test_postgres_restart_under_the_worker_is_survived(
    services: LocalServices, tmp_path: Path
) -> None:
    with throwaway_postgres() as server_url:
        await anyio.to_thread.run_sync(upgrade, server_url)
        engine = create_async_engine(async_database_url(server_url), pool_pre_ping=True)
        env = {
            "DATABASE_URL": server_url,
            "REDIS_URL": services.redis_url,
            "POLL_INTERVAL_MS": "300",
            "PUBSUB_CHANNEL": f"chat:restart:{uuid.uuid4().hex[:6]}",
            "WORKER_ID": "chat-pg-restart",
        }
        worker = WorkerProcess(CHAT, env, tmp_path / "restart.log")
        try:
            worker.wait_ready()
            async with subscribed(services.redis_url, env["PUBSUB_CHANNEL"]) as received:
                before = await add_chat(engine, 10)
                await received.wait_for_ids(before, timeout=10)

                await anyio.to_thread.run_sync(stop_throwaway, server_url)
                await anyio.sleep(1.0)
                await anyio.to_thread.run_sync(start_throwaway, server_url)

                after = await add_chat(engine, 10)
                await received.wait_for_ids(after, timeout=30)
            assert worker.process.poll() is None, "the worker died instead of reconnecting"
            assert worker.events("database.unavailable") or worker.events("listen.unavailable")
        finally:
            worker.stop()
            await engine.dispose()
    assert worker.process.returncode == 0


# -- start-up -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
        ({"BATCH_SIZE": "lots"}, "BATCH_SIZE"),
        ({"PUBSUB_MODE": "channel"}, "PUBSUB_MODE"),
        ({"POLL_INTERVAL_MS": "-5"}, "POLL_INTERVAL_MS"),
        ({"LOCK_SECONDS": "0"}, "LOCK_SECONDS"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"DATABASE_URL": "mysql://u:pw@h/db"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://:hunter2@h"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://:hunter2@h:port/0"}, "REDIS_URL"),
        ({"REDIS_TIMEOUT_SECONDS": "40"}, "REDIS_TIMEOUT_SECONDS"),
        ({"REDIS_URL": ""}, "REDIS_URL"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(
    base_env: dict[str, str], env: Mapping[str, str], named: str
) -> None:
    merged = {**base_env, **env}
    if not merged["REDIS_URL"]:
        del merged["REDIS_URL"]
    code, stderr = run_to_exit(CHAT, merged)
    assert code == EXIT_BAD_SETTINGS, stderr
    assert named in stderr
    assert "Traceback" not in stderr
    assert "hunter2" not in stderr and "pw@" not in stderr


@pytest.mark.parametrize("unreachable", ["redis", "postgres", "unmigrated"])
def test_an_unreachable_dependency_fails_start_up_by_name(
    base_env: dict[str, str], services: LocalServices, unreachable: str
) -> None:
    port = free_port()
    env = {**base_env, "STARTUP_TIMEOUT_SECONDS": "1"}
    if unreachable == "redis":
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        expected = f"Redis at redis://127.0.0.1:{port}"
    elif unreachable == "postgres":
        env["DATABASE_URL"] = f"postgresql://nobody:secret@127.0.0.1:{port}/app"
        expected = f"PostgreSQL at postgresql://nobody:***@127.0.0.1:{port}/app"
    else:
        env["DATABASE_URL"] = services.database_url  # a server without the outbox table
        expected = "run the migrations"
    code, stderr = run_to_exit(CHAT, env)
    assert code == EXIT_UNREACHABLE, stderr
    assert expected in stderr
    assert "secret" not in stderr


async def test_metrics_health_and_readiness(
    engine: AsyncEngine, services: LocalServices, start_worker: StartWorker
) -> None:
    port = free_port()
    start_worker(METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    async with subscribed(services.redis_url, "chat:message") as received:
        ids = await add_chat(engine, 3)
        await received.wait_for_ids(ids, timeout=10)
    await wait_all_published(engine)
    assert await anyio.to_thread.run_sync(get, "/healthz") == (200, "ok\n")
    assert await anyio.to_thread.run_sync(get, "/readyz") == (200, "ready\n")
    assert (await anyio.to_thread.run_sync(get, "/nope"))[0] == 404
    status, body = await anyio.to_thread.run_sync(get, "/metrics")
    assert status == 200
    assert 'outbox_published_total{type="message.created"} 3.0' in body
    assert 'outbox_claimed_total{type="message.created"} 3.0' in body
    assert "outbox_delivery_lag_seconds_bucket" in body
    assert "outbox_rows_pending" in body


async def test_readyz_tells_a_redis_outage_and_its_end_while_no_message_flows(
    engine: AsyncEngine, base_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()

    def readyz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    async def answers(status: int, body_start: str) -> None:
        async def matches() -> bool:
            got_status, body = await anyio.to_thread.run_sync(readyz)
            return got_status == status and body.startswith(body_start)

        await wait_until(matches, 10, f"/readyz to answer {status} {body_start!r}")

    with throwaway_redis() as redis_url:
        env = {
            **base_env,
            "REDIS_URL": redis_url,
            "METRICS_PORT": str(port),
            "METRICS_HOST": "127.0.0.1",
            "TRANSPORT_CHECK_SECONDS": "0.3",
            "REDIS_TIMEOUT_SECONDS": "1",
            "WORKER_ID": "chat-idle",
        }
        worker = WorkerProcess(CHAT, env, tmp_path / "idle.log")
        try:
            worker.wait_ready()
            await answers(200, "ready")
            await anyio.to_thread.run_sync(stop_throwaway, redis_url)
            redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
            await answers(503, f"Redis at redis://127.0.0.1:{redis_port} unavailable: ")
            await anyio.to_thread.run_sync(start_throwaway, redis_url)
            await answers(200, "ready")
            assert worker.events("transport.unavailable") and worker.events("transport.recovered")
        finally:
            worker.stop()
    assert await table(engine) == {}  # no message flowed: the idle check told it all


def test_sigterm_during_start_up_exits_zero_and_health_answers_meanwhile(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **base_env,
        "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/app",
        "STARTUP_TIMEOUT_SECONDS": "60",
        "METRICS_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
    }
    worker = WorkerProcess(CHAT, env, tmp_path / "starting.log")
    try:
        worker.wait_for_event("startup.waiting")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert unready.value.code == 503
        assert unready.value.read() == b"starting\n"
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, worker.log
    finally:
        worker.stop()


def test_the_envelope_keeps_every_value_exact() -> None:
    from datetime import UTC, datetime

    from outbox import ClaimedMessage
    from workers.chat import envelope

    created = datetime(2026, 11, 22, 4, 5, 13, 364759, tzinfo=UTC)
    big = 2**80 + 1  # beyond 64 bits: must not turn into a float

    def body(payload: object) -> dict[str, object]:
        message = ClaimedMessage(
            7, "message.created", "r1", payload, 1, created, created, "w", created, None,
            uuid.uuid4(),
        )  # fmt: skip
        return json.loads(envelope(message))

    assert body({"text": "ü", "n": 1}) == {
        "id": 7,
        "type": "message.created",
        "key": "r1",
        "seq": None,
        "payload": {"text": "ü", "n": 1},
        "created_at": "2026-11-22T04:05:13.364759+00:00",
    }
    assert body({"big": big})["payload"] == {"big": big}
