"""The worker runtime in-process, on real PostgreSQL, with small handlers of our own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import (
    DELIVERED,
    ClaimedMessage,
    GiveUp,
    GiveUpError,
    NewMessage,
    Outcome,
    PerMessage,
    Retry,
    RetryLaterError,
    StartupError,
    TransportUnavailable,
    claim_batch,
    enqueue_many,
)
from outbox.runtime.settings import WorkerSettings, load_settings
from outbox.runtime.worker import Worker
from tests.workerproc import running

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch handler whose behaviour per message is a function of the message."""

    name = "recorder"

    def __init__(self, decide: Callable[[ClaimedMessage], Awaitable[Outcome]]) -> None:
        self.decide = decide
        self.seen: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def handle_batch(self, messages: Sequence[ClaimedMessage]) -> Sequence[Outcome]:
        self.in_flight += len(messages)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.seen += [m.id for m in messages]
            return [await self.decide(m) for m in messages]
        finally:
            self.in_flight -= len(messages)


async def deliver(_: ClaimedMessage) -> Outcome:
    return DELIVERED


def settings(database_url: str, **values: Any) -> WorkerSettings:
    defaults: dict[str, Any] = {
        "database_url": database_url,
        "worker_id": "w1",
        "poll_interval_ms": 50,
        "reap_interval_seconds": 0.2,
        "log_format": "text",
    }
    return load_settings(WorkerSettings, **{**defaults, **values})


async def add(engine: AsyncEngine, count: int, type_: str = "message.created") -> list[int]:
    async with engine.begin() as conn:
        return await enqueue_many(conn, [NewMessage(type_, {"n": n}) for n in range(count)])


async def rows(engine: AsyncEngine) -> dict[int, tuple[str, int, str | None]]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT id, status, attempts, error FROM outbox"))
        return {r.id: (r.status, r.attempts, r.error) for r in result}


async def settle(engine: AsyncEngine, done: Callable[[dict[int, Any]], bool]) -> dict[int, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = await rows(engine)
        if done(state):
            return state
        await anyio.sleep(0.03)
    raise AssertionError(f"never settled: {await rows(engine)}")


def handled(state: dict[int, Any]) -> bool:
    """Every row claimed at least once and acknowledged."""
    return bool(state) and all(s != "in_progress" and n >= 1 for s, n, _ in state.values())


def all_in(*statuses: str) -> Callable[[dict[int, Any]], bool]:
    return lambda state: bool(state) and all(s in statuses for s, _, _ in state.values())


async def test_outcomes_become_published_retried_and_dead(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 4)
    verdicts: dict[int, Outcome] = {
        ids[0]: DELIVERED,
        ids[1]: Retry("try later", delay=3600),
        ids[2]: GiveUp("malformed"),
        ids[3]: Retry("flaky"),
    }

    async def decide(message: ClaimedMessage) -> Outcome:
        return verdicts[message.id]

    worker = Worker(Recorder(decide), settings(database_url, max_attempts=2, backoff_schedule="0"))
    async with running(worker):
        state = await settle(engine, lambda s: s[ids[3]][0] == "dead")
    assert state[ids[0]] == ("published", 1, None)
    assert state[ids[1]] == ("pending", 1, "try later")
    assert state[ids[2]] == ("dead", 1, "malformed")
    assert state[ids[3]] == ("dead", 2, "flaky")  # retried at once (schedule 0), then out
    async with engine.connect() as conn:
        wait = await conn.scalar(
            text("SELECT next_attempt_at - now() FROM outbox WHERE id = :id"), {"id": ids[1]}
        )
    assert timedelta(minutes=59) < wait <= timedelta(hours=1)


async def test_a_crashing_or_slow_handler_counts_as_a_failed_attempt(
    engine: AsyncEngine, database_url: str
) -> None:
    crash, slow = await add(engine, 2)

    async def decide(message: ClaimedMessage) -> Outcome:
        if message.id == crash:
            raise ValueError("boom")
        await anyio.sleep(10)
        return DELIVERED

    handler = PerMessage(_Adapter(decide), timeout=0.3)
    worker = Worker(handler, settings(database_url, backoff_schedule="3600"))
    async with running(worker):
        state = await settle(engine, lambda s: s[crash][1] == 1 and s[slow][2] is not None)
    assert state[crash] == ("pending", 1, "ValueError: boom")
    assert state[slow] == ("pending", 1, "timed out after 0.3s")


async def test_a_transport_outage_hands_rows_back_without_counting_attempts(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 3)
    tries = 0

    async def decide(message: ClaimedMessage) -> Outcome:
        nonlocal tries
        tries += 1
        if tries <= 9:  # three outages of the whole batch, far beyond max_attempts=2
            raise TransportUnavailable("connection refused")
        return DELIVERED

    worker = Worker(
        Recorder(decide),
        settings(database_url, max_attempts=2, transport_retry_max_seconds=0.2),
    )
    async with running(worker):
        state = await settle(engine, all_in("published"))
    assert {attempts for _, attempts, _ in state.values()} == {1}
    assert sorted(state) == ids


async def test_an_outage_retry_counts_attempts_but_never_takes_the_last_one(
    engine: AsyncEngine, database_url: str
) -> None:
    (row,) = await add(engine, 1)
    tries = 0

    async def decide(message: ClaimedMessage) -> Outcome:
        nonlocal tries
        tries += 1
        if tries <= 4:  # four outages; max_attempts=2 would have made it dead at the second
            return Retry("sidecar unreachable", delay=0, outage=True)
        return DELIVERED

    worker = Worker(
        Recorder(decide),
        settings(database_url, max_attempts=2, transport_retry_max_seconds=0.2),
    )
    async with running(worker):
        state = await settle(engine, all_in("published"))
    # The first outage counted (attempt 1 → retried); at attempt 2, the last, every outage was
    # handed back uncounted, so the row stayed at 2 attempts and was finally delivered.
    assert tries == 5
    assert state[row] == ("published", 2, None)


async def test_an_undecodable_row_dies_alone_and_its_batch_mates_are_delivered(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 10)
    async with engine.begin() as conn:
        bad = (
            await conn.exec_driver_sql(
                "INSERT INTO outbox (type, payload) VALUES"
                " ('message.created', ('[1' || repeat('0', 5000) || ']')::jsonb) RETURNING id"
            )
        ).scalar_one()
    ids += await add(engine, 10)
    recorder = Recorder(deliver)
    async with running(Worker(recorder, settings(database_url))):
        state = await settle(engine, all_in("published", "dead"))
    assert sorted(recorder.seen) == ids
    assert {id_ for id_, (status, _, _) in state.items() if status == "published"} == set(ids)
    assert state[bad][0] == "dead" and state[bad][1] == 1
    assert "undecodable payload" in state[bad][2]


async def test_the_heartbeat_keeps_a_long_job_leased(
    engine: AsyncEngine, database_url: str
) -> None:
    (row,) = await add(engine, 1)

    async def slow(_: ClaimedMessage) -> Outcome:
        await anyio.sleep(2.5)
        return DELIVERED

    worker = Worker(Recorder(slow), settings(database_url, lock_seconds=1))
    async with running(worker):
        await anyio.sleep(1.5)  # past the first lease
        async with engine.begin() as conn:  # a rival claimer finds nothing to take
            assert await claim_batch(conn, limit=10, lock_seconds=5, worker_id="rival") == []
        state = await settle(engine, all_in("published"))
    assert state[row] == ("published", 1, None)


async def test_expired_leases_of_a_dead_worker_are_reaped_and_delivered(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 3)
    async with engine.begin() as conn:  # "crashed" worker: claimed, then gone
        await claim_batch(conn, limit=10, lock_seconds=0.2, worker_id="crashed")
    recorder = Recorder(deliver)
    async with running(Worker(recorder, settings(database_url))):
        state = await settle(engine, all_in("published"))
    assert {attempts for _, attempts, _ in state.values()} == {2}
    assert sorted(recorder.seen) == ids


async def test_in_flight_messages_stay_within_concurrency(
    engine: AsyncEngine, database_url: str
) -> None:
    await add(engine, 60)

    async def slowish(_: ClaimedMessage) -> Outcome:
        await anyio.sleep(0.01)
        return DELIVERED

    recorder = Recorder(slowish)
    async with running(Worker(recorder, settings(database_url, batch_size=4, concurrency=10))):
        await settle(engine, all_in("published"))
    assert recorder.max_in_flight <= 10
    assert recorder.max_in_flight > 4  # more than one batch at a time
    assert len(recorder.seen) == 60


async def test_stop_waits_for_in_flight_work_within_the_grace_period(
    engine: AsyncEngine, database_url: str
) -> None:
    (row,) = await add(engine, 1)
    started = anyio.Event()

    async def slow(_: ClaimedMessage) -> Outcome:
        started.set()
        await anyio.sleep(0.5)
        return DELIVERED

    worker = Worker(Recorder(slow), settings(database_url, shutdown_grace_seconds=5))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await started.wait()
        worker.stop()
    assert (await rows(engine))[row] == ("published", 1, None)


async def test_work_past_the_grace_period_is_rescheduled_due_at_once(
    engine: AsyncEngine, database_url: str
) -> None:
    (row,) = await add(engine, 1)
    started = anyio.Event()

    async def stuck(_: ClaimedMessage) -> Outcome:
        started.set()
        await anyio.sleep(60)
        return DELIVERED

    worker = Worker(Recorder(stuck), settings(database_url, shutdown_grace_seconds=0.2))
    begun = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await started.wait()
        worker.stop()
    assert time.monotonic() - begun < 5
    status, attempts, error = (await rows(engine))[row]
    assert (status, attempts) == ("pending", 1)
    assert error == "worker stopped before the handler finished"


async def test_only_the_configured_prefixes_are_taken(
    engine: AsyncEngine, database_url: str
) -> None:
    docs = await add(engine, 2, "document.preprocess.v1")
    chats = await add(engine, 2, "message.created")
    recorder = Recorder(deliver)
    config = settings(database_url, include_type_prefixes="document.")
    async with running(Worker(recorder, config)):
        await settle(engine, lambda s: all(s[i][0] == "published" for i in docs))
        await anyio.sleep(0.2)
    assert sorted(recorder.seen) == docs
    state = await rows(engine)
    assert [state[i] for i in chats] == [("pending", 0, None)] * 2


class _Adapter:
    """A MessageHandler from a decide function (raises instead of returning outcomes)."""

    name = "adapter"

    def __init__(self, decide: Callable[[ClaimedMessage], Awaitable[Outcome]]) -> None:
        self.decide = decide

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def handle(self, message: ClaimedMessage) -> None:
        await self.decide(message)


async def test_per_message_maps_exceptions_to_outcomes(engine: AsyncEngine) -> None:
    async def decide(message: ClaimedMessage) -> Outcome:
        behaviour = message.payload["n"]  # type: ignore[index,call-overload]
        if behaviour == 1:
            raise RetryLaterError("busy", delay=7)
        if behaviour == 2:
            raise GiveUpError("rejected")
        if behaviour == 3:
            raise KeyError("x")
        return DELIVERED

    await add(engine, 4)
    async with engine.begin() as conn:
        claimed = await claim_batch(conn, limit=4, lock_seconds=5, worker_id="w")
    outcomes = await PerMessage(_Adapter(decide), timeout=1).handle_batch(claimed)
    expected = [DELIVERED, Retry("busy", 7), GiveUp("rejected"), Retry("KeyError: 'x'")]
    assert list(outcomes) == expected


def test_worker_settings_defaults_follow_batch_size() -> None:
    config = load_settings(WorkerSettings, database_url="postgresql://u@h/db", batch_size=50)
    assert config.max_in_flight == 100
    assert config.include is None
    assert load_settings(
        WorkerSettings, database_url="postgresql://u@h/db", exclude_type_prefixes=" a., b. ,"
    ).exclude == ("a.", "b.")


# -- what a review found: bad outcomes, stray cancellations, hung databases ----------------


async def test_bad_outcomes_never_block_the_other_messages(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 5)
    verdicts: dict[int, Outcome] = {
        ids[0]: Retry("nan delay", delay=float("nan")),
        ids[1]: Retry("negative delay", delay=-5),
        ids[2]: Retry("undecodable \udcff bytes", delay=3600),
        ids[3]: GiveUp(123),  # type: ignore[arg-type]
        ids[4]: DELIVERED,
    }

    async def decide(message: ClaimedMessage) -> Outcome:
        return verdicts.get(message.id, DELIVERED)

    worker = Worker(Recorder(decide), settings(database_url, backoff_schedule="3600"))
    async with running(worker):
        state = await settle(engine, handled)
        more = await add(engine, 2)  # the worker still takes new work afterwards
        state = await settle(engine, lambda s: all(s[i][0] == "published" for i in more))
    assert state[ids[0]] == ("pending", 1, "nan delay")
    assert state[ids[1]] == ("pending", 1, "negative delay")
    assert state[ids[2]] == ("pending", 1, "undecodable ? bytes")
    assert state[ids[3]] == ("dead", 1, "123")
    assert state[ids[4]] == ("published", 1, None)


async def test_a_stray_cancelled_error_from_a_handler_is_a_failed_attempt(
    engine: AsyncEngine, database_url: str
) -> None:
    first, second = await add(engine, 2)

    async def decide(message: ClaimedMessage) -> Outcome:
        if message.id == first:
            raise asyncio.CancelledError  # e.g. awaiting a task someone else cancelled
        return DELIVERED

    worker = Worker(Recorder(decide), settings(database_url, batch_size=1, backoff_schedule="3600"))
    async with running(worker):
        state = await settle(engine, lambda s: s[second][0] == "published" and s[first][1] == 1)
        assert worker.readiness() is None  # still running
    assert state[first] == ("pending", 1, "CancelledError")


async def test_one_hung_message_fails_alone_under_per_message_timeouts(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add(engine, 4)

    async def decide(message: ClaimedMessage) -> Outcome:
        if message.id == ids[1]:
            await anyio.sleep(60)
        return DELIVERED

    config = settings(database_url, handler_timeout_seconds=0.3, backoff_schedule="3600")
    worker = Worker(PerMessage(_Adapter(decide), timeout=0.3), config)
    async with running(worker):
        state = await settle(engine, handled)
    assert state[ids[1]] == ("pending", 1, "timed out after 0.3s")
    assert [state[i][0] for i in (ids[0], ids[2], ids[3])] == ["published"] * 3


async def test_a_hung_database_marks_the_worker_unready_and_does_not_stall_its_stop(
    engine: AsyncEngine, database_url: str
) -> None:
    worker = Worker(Recorder(deliver), settings(database_url, database_timeout_seconds=1))
    finished = anyio.Event()

    async def run_worker(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        await worker.run(task_status=task_status)
        finished.set()

    async with anyio.create_task_group() as tg:
        await tg.start(run_worker)
        async with engine.connect() as locker:  # every statement on outbox now hangs
            await locker.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
            with anyio.fail_after(10):
                while worker.readiness() is None:
                    await anyio.sleep(0.05)
            assert "database unavailable: TimeoutError" in (worker.readiness() or "")
            worker.stop()
            with anyio.fail_after(8):  # while the lock is still held
                await finished.wait()


async def test_stop_during_start_up_returns_cleanly(database_url: str) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:9/none"
    worker = Worker(Recorder(deliver), settings(unreachable, startup_timeout_seconds=60))
    begun = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await anyio.sleep(0.5)
        worker.stop()
    assert time.monotonic() - begun < 5


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"lock_seconds": 0.5}, "LOCK_SECONDS"),
        ({"include_type_prefixes": "document.x", "exclude_type_prefixes": "document."}, "take"),
        ({"worker_id": "w\udcff"}, "WORKER_ID"),
        ({"database_timeout_seconds": 0}, "DATABASE_TIMEOUT_SECONDS"),
    ],
)
def test_settings_that_could_only_fail_later_fail_at_start(
    values: dict[str, Any], named: str
) -> None:
    from outbox.primitives.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=named):
        load_settings(WorkerSettings, database_url="postgresql://u@h/db", **values)
    blank = load_settings(
        WorkerSettings, database_url="postgresql://u@h/db", backoff_schedule=" , "
    )
    assert blank.backoff() is not None


class Probe(Recorder):
    """A handler whose transport check fails, hangs or passes, as the test says."""

    name = "probe transport"

    def __init__(self) -> None:
        super().__init__(deliver)
        self.state = "up"
        self.checks = 0

    async def check(self) -> None:
        self.checks += 1
        if self.state == "down":
            raise ConnectionError("connection refused")
        if self.state == "hung":
            await anyio.sleep(3600)


async def test_an_idle_worker_checks_its_transport_for_readiness(database_url: str) -> None:
    handler = Probe()
    worker = Worker(
        handler, settings(database_url, transport_check_seconds=0.1, handler_timeout_seconds=0.3)
    )

    async def readiness_becomes(expected: str | None) -> None:
        with anyio.fail_after(5):
            while worker.readiness() != expected:
                await anyio.sleep(0.02)

    async with running(worker):
        await readiness_becomes(None)
        handler.state = "down"  # no message flows: only the idle check can tell
        await readiness_becomes("probe transport unavailable: ConnectionError: connection refused")
        handler.state = "up"
        await readiness_becomes(None)
        handler.state = "hung"
        await readiness_becomes("probe transport unavailable: check timed out after 0.3s")
        handler.state = "up"
        await readiness_becomes(None)
        checks = handler.checks
    assert checks >= 4


async def test_a_url_requiring_ssl_from_a_server_without_it_fails_start_up_at_once(
    database_url: str,
) -> None:
    """A setting no retry mends: StartupError now, not after STARTUP_TIMEOUT_SECONDS."""
    url = make_url(database_url).update_query_dict({"sslmode": "require"})
    worker = Worker(
        Recorder(deliver),
        settings(url.render_as_string(hide_password=False), startup_timeout_seconds=60),
    )
    started = time.monotonic()
    with pytest.raises(ExceptionGroup) as raised:  # raised inside the worker's task group
        await worker.run()
    (error,) = raised.value.exceptions
    assert isinstance(error, StartupError), error
    assert "rejected SSL upgrade" in str(error) and "check DATABASE_URL" in str(error)
    assert time.monotonic() - started < 10
