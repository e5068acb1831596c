"""Acknowledgements, leases and reaping: fenced, exact, with time stepped (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import (
    ClaimedMessage,
    FixedSchedule,
    InvalidArgumentError,
    NewMessage,
    Status,
    claim_batch,
    enqueue_many,
    extend_lease,
    mark_dead,
    mark_published,
    outbox_table,
    reap_expired_locks,
    release,
    reschedule,
    stats,
)
from outbox.storage.execution import AsyncDB

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def add(engine: AsyncEngine, count: int = 1, type_: str = "message.created") -> list[int]:
    async with engine.begin() as conn:
        return await enqueue_many(
            conn, [NewMessage(type_, {"i": i}, available_at=T0) for i in range(count)]
        )


async def claim(engine: AsyncDB, worker: str, now: datetime) -> list[ClaimedMessage]:
    return await claim_batch(engine, limit=100, lock_seconds=10, worker_id=worker, now=now)


async def state(engine: AsyncEngine, id_: int) -> dict[str, Any]:
    t = outbox_table
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    t.c.status,
                    t.c.attempts,
                    t.c.locked_by,
                    t.c.error,
                    t.c.next_attempt_at,
                    t.c.lease_token,
                ).where(t.c.id == id_)
            )
        ).one()
    return dict(row._mapping)


async def test_mark_published_acknowledges_a_whole_batch(engine: AsyncEngine) -> None:
    ids = await add(engine, 3)
    batch = await claim(engine, "w1", at(1))
    result = await mark_published(engine, batch, worker_id="w1", now=at(2))
    assert (result.applied, result.lost, result.ok) == (frozenset(ids), frozenset(), True)
    for id_ in ids:
        row = await state(engine, id_)
        assert (row["status"], row["locked_by"], row["lease_token"]) == (
            Status.PUBLISHED,
            None,
            None,
        )
    again = await mark_published(engine, batch, worker_id="w1")
    assert again.lost == frozenset(ids)  # already published: a second ack changes nothing


async def test_expired_lease_is_reaped_reclaimed_and_the_old_holder_is_fenced_out(
    engine: AsyncEngine,
) -> None:
    [id_] = await add(engine)
    [stale] = await claim(engine, "w1", at(1))  # lease until at(11); w1 then stalls
    early = await reap_expired_locks(engine, now=at(10))
    assert (early.requeued, early.dead) == (set(), set())
    reaped = await reap_expired_locks(engine, now=at(12))
    assert (reaped.requeued, reaped.dead) == (frozenset({id_}), frozenset())
    row = await state(engine, id_)
    assert (row["error"], row["locked_by"], row["lease_token"]) == (
        "lease expired (held by w1) after attempt 1",
        None,
        None,
    )

    [fresh] = await claim(engine, "w2", at(13))
    assert (fresh.id, fresh.attempts, fresh.locked_by) == (id_, 2, "w2")

    # Every late acknowledgement by w1 changes nothing and says so.
    assert (await mark_published(engine, [stale], worker_id="w1")).lost == {id_}
    late_retry = await reschedule(engine, [stale], worker_id="w1", error="late")
    assert (late_retry.retried, late_retry.dead, late_retry.lost) == (set(), set(), {id_})
    assert (await mark_dead(engine, [stale], worker_id="w1", error="late")).lost == {id_}
    assert (await extend_lease(engine, [stale], worker_id="w1", lock_seconds=60)).lost == {id_}
    assert (await release(engine, [stale], worker_id="w1")).lost == {id_}
    row = await state(engine, id_)
    assert (row["status"], row["attempts"], row["locked_by"]) == (Status.IN_PROGRESS, 2, "w2")

    assert (await mark_published(engine, [fresh], worker_id="w2")).applied == {id_}
    assert (await state(engine, id_))["status"] == Status.PUBLISHED


async def test_same_worker_reclaiming_after_a_reap_is_fenced_by_the_lease_token(
    engine: AsyncEngine,
) -> None:
    [id_] = await add(engine)
    [first] = await claim(engine, "w1", at(1))
    await reap_expired_locks(engine, now=at(20))
    [second] = await claim(engine, "w1", at(21))
    assert (await mark_published(engine, [first], worker_id="w1")).lost == {id_}
    assert (await mark_published(engine, [second], worker_id="w1")).applied == {id_}


async def test_a_released_and_reclaimed_row_fences_out_the_first_claim(
    engine: AsyncEngine,
) -> None:
    """Release hands the attempt back, so (id, attempts, worker) repeats: the token does not."""
    [id_] = await add(engine)
    [first] = await claim(engine, "w1", at(1))
    assert (await release(engine, [first], worker_id="w1")).applied == {id_}
    [second] = await claim(engine, "w1", at(2))
    assert (first.attempts, second.attempts) == (1, 1)
    assert first.lease_token != second.lease_token
    late = await reschedule(engine, [first], worker_id="w1", error="stale", max_attempts=1)
    assert late.lost == {id_}
    assert (await mark_published(engine, [second], worker_id="w1")).applied == {id_}


async def test_another_worker_cannot_acknowledge_a_lease_it_does_not_hold(
    engine: AsyncEngine,
) -> None:
    [id_] = await add(engine)
    [message] = await claim(engine, "w1", at(1))
    assert (await mark_published(engine, [message], worker_id="w2")).lost == {id_}
    assert (await extend_lease(engine, [message], worker_id="w2", lock_seconds=60)).lost == {id_}
    row = await state(engine, id_)
    assert (row["status"], row["locked_by"]) == (Status.IN_PROGRESS, "w1")


async def test_a_heartbeat_never_shortens_a_lease(engine: AsyncEngine) -> None:
    [id_] = await add(engine)
    [message] = await claim_batch(engine, limit=1, lock_seconds=300, worker_id="w1", now=at(0))
    assert (await extend_lease(engine, [message], worker_id="w1", lock_seconds=5, now=at(1))).ok
    assert (await reap_expired_locks(engine, now=at(299))).requeued == set()
    assert (await reap_expired_locks(engine, now=at(301))).requeued == {id_}


async def test_a_claim_joins_the_callers_transaction(engine: AsyncEngine) -> None:
    [id_] = await add(engine)
    async with engine.connect() as conn:
        [message] = await claim(conn, "w1", at(1))
        await conn.rollback()  # the claim is undone with the caller's transaction
    assert (await state(engine, id_))["status"] == Status.PENDING
    async with engine.connect() as conn:
        [message] = await claim(conn, "w1", at(1))
        assert (await mark_published(conn, [message], worker_id="w1")).ok
        await conn.commit()
    assert (await state(engine, id_))["status"] == Status.PUBLISHED


async def test_an_expired_but_unreaped_lease_may_still_be_acknowledged(
    engine: AsyncEngine,
) -> None:
    await add(engine)
    [message] = await claim(engine, "w1", at(1))
    # Nobody reaped or reclaimed it, so the work w1 did still counts.
    assert (await mark_published(engine, [message], worker_id="w1", now=at(60))).ok


async def test_reschedule_backs_off_then_goes_dead_at_the_attempt_limit(
    engine: AsyncEngine,
) -> None:
    [id_] = await add(engine, type_="document.preprocess.v1")
    schedule = FixedSchedule([60, 300])
    now = at(0)
    for attempt, wait in ((1, 60), (2, 300)):
        [message] = await claim(engine, "w1", now)
        assert message.attempts == attempt
        result = await reschedule(
            engine,
            [message],
            worker_id="w1",
            error=f"timeout {attempt}",
            max_attempts=3,
            backoff=schedule,
            now=now,
        )
        assert (result.retried, result.dead) == ({id_}, set())
        row = await state(engine, id_)
        assert (row["status"], row["error"]) == (Status.PENDING, f"timeout {attempt}")
        assert row["next_attempt_at"] == now + timedelta(seconds=wait)
        assert await claim(engine, "w1", now + timedelta(seconds=wait - 1)) == []
        now += timedelta(seconds=wait)

    [last] = await claim(engine, "w1", now)
    result = await reschedule(
        engine, [last], worker_id="w1", error="timeout 3", max_attempts=3, now=now
    )
    assert (result.retried, result.dead, result.lost) == (set(), {id_}, set())
    row = await state(engine, id_)
    assert (row["status"], row["attempts"], row["error"]) == (Status.DEAD, 3, "timeout 3")
    assert await claim(engine, "w1", now + timedelta(days=1)) == []


async def test_reschedule_takes_per_message_errors_and_an_explicit_delay(
    engine: AsyncEngine,
) -> None:
    a, b = await add(engine, 2)
    batch = await claim(engine, "w1", at(0))
    result = await reschedule(
        engine,
        batch,
        worker_id="w1",
        error={a: "503 from sidecar", b: "429 from sidecar"},
        delay={b: 120},
        backoff=FixedSchedule([5]),
        now=at(0),
    )
    assert result.retried == {a, b}
    row_a, row_b = await state(engine, a), await state(engine, b)
    assert (row_a["error"], row_a["next_attempt_at"]) == ("503 from sidecar", at(5))
    assert (row_b["error"], row_b["next_attempt_at"]) == ("429 from sidecar", at(120))


async def test_reaping_at_the_attempt_limit_marks_dead(engine: AsyncEngine) -> None:
    [id_] = await add(engine)
    [message] = await claim(engine, "w1", at(0))
    reaped = await reap_expired_locks(engine, max_attempts=1, now=at(30))
    assert (reaped.requeued, reaped.dead) == (set(), {id_})
    row = await state(engine, id_)
    assert (row["status"], row["error"]) == (
        Status.DEAD,
        "lease expired (held by w1) after attempt 1",
    )
    assert (await mark_published(engine, [message], worker_id="w1")).lost == {id_}


async def test_reap_takes_only_expired_leases_and_respects_limit(engine: AsyncEngine) -> None:
    ids = await add(engine, 5)
    await claim_batch(engine, limit=3, lock_seconds=10, worker_id="short", now=at(0))
    await claim_batch(engine, limit=2, lock_seconds=100, worker_id="long", now=at(0))
    first = await reap_expired_locks(engine, limit=2, now=at(50))
    second = await reap_expired_locks(engine, limit=2, now=at(50))
    assert (len(first.requeued), len(second.requeued)) == (2, 1)
    assert first.requeued | second.requeued == set(ids[:3])


async def test_extend_lease_keeps_a_long_job_from_being_reaped(engine: AsyncEngine) -> None:
    [id_] = await add(engine)
    [message] = await claim(engine, "w1", at(0))  # lease until at(10)
    extended = await extend_lease(engine, [message], worker_id="w1", lock_seconds=30, now=at(8))
    assert extended.applied == {id_}
    # Lease now ends at at(38), not at(10).
    assert (await reap_expired_locks(engine, now=at(20))).requeued == set()
    assert (await reap_expired_locks(engine, now=at(37))).requeued == set()
    assert (await reap_expired_locks(engine, now=at(39))).requeued == {id_}


async def test_release_hands_rows_back_without_counting_the_attempt(engine: AsyncEngine) -> None:
    a, b = await add(engine, 2)
    first, second = await claim(engine, "w1", at(0))
    assert (await release(engine, [first], worker_id="w1")).applied == {a}
    held = await release(engine, [second], worker_id="w1", delay=60, now=at(0))
    assert held.applied == {b}
    row_a, row_b = await state(engine, a), await state(engine, b)
    assert (row_a["status"], row_a["attempts"], row_a["locked_by"]) == (Status.PENDING, 0, None)
    assert (row_b["attempts"], row_b["next_attempt_at"]) == (0, at(60))
    assert [m.id for m in await claim(engine, "w2", at(1))] == [a]
    assert [m.id for m in await claim(engine, "w2", at(61))] == [b]


async def test_mark_dead_gives_up_at_once_with_the_reason(engine: AsyncEngine) -> None:
    a, b = await add(engine, 2)
    batch = await claim(engine, "w1", at(0))
    with pytest.raises(InvalidArgumentError, match=f"error: no entry for message {b}"):
        await mark_dead(engine, batch, worker_id="w1", error={a: "404 unknown document"})
    result = await mark_dead(engine, batch, worker_id="w1", error={a: "404", b: "403"})
    assert result.applied == {a, b}
    assert (await state(engine, a))["error"] == "404"
    assert (await state(engine, b))["status"] == Status.DEAD
    assert await claim(engine, "w1", at(100)) == []


async def test_long_errors_are_cut(engine: AsyncEngine) -> None:
    [id_] = await add(engine)
    batch = await claim(engine, "w1", at(0))
    await mark_dead(engine, batch, worker_id="w1", error="x" * 10_000)
    error = (await state(engine, id_))["error"]
    assert len(error) == 2000 and error.endswith("…")


async def test_empty_batches_make_no_round_trip() -> None:
    # An engine whose server does not exist: any statement would fail to connect.
    nowhere = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        assert (await mark_published(nowhere, [], worker_id="w")).ok
        assert (await mark_dead(nowhere, [], worker_id="w", error="e")).ok
        assert (await reschedule(nowhere, [], worker_id="w", error="e")).ok
        assert (await extend_lease(nowhere, [], worker_id="w", lock_seconds=5)).ok
        assert (await release(nowhere, [], worker_id="w")).ok
        with pytest.raises(OSError):
            await reap_expired_locks(nowhere)  # ...as this one shows
    finally:
        await nowhere.dispose()


async def test_stats_counts_by_status_and_prefix(engine: AsyncEngine) -> None:
    await add(engine, 3, "message.created")
    await add(engine, 2, "document.preprocess.v1")
    await add(engine, 1, "nodot")
    published = await claim_batch(
        engine, limit=2, lock_seconds=10, worker_id="w", include_type_prefix="message.", now=at(0)
    )
    await mark_published(engine, published, worker_id="w")
    dead = await claim_batch(
        engine, limit=1, lock_seconds=10, worker_id="w", include_type_prefix="document.", now=at(0)
    )
    await mark_dead(engine, dead, worker_id="w", error="bad")
    await claim_batch(
        engine, limit=1, lock_seconds=10, worker_id="w", include_type_prefix="nodot", now=at(0)
    )

    snapshot = await stats(engine, now=at(90))
    assert snapshot.by_status == {
        Status.PENDING: 2,
        Status.IN_PROGRESS: 1,
        Status.PUBLISHED: 2,
        Status.DEAD: 1,
    }
    assert snapshot.total == 6
    assert {p: {s.value: n for s, n in c.items() if n} for p, c in snapshot.by_prefix.items()} == {
        "document.": {"pending": 1, "dead": 1},
        "message.": {"pending": 1, "published": 2},
        "nodot": {"in_progress": 1},
    }
    assert snapshot.oldest_claimable_age == 90.0
    assert (await stats(engine, now=at(-1))).oldest_claimable_age is None


def test_storable_error_is_what_every_error_column_gets() -> None:
    from outbox.primitives.constants import MAX_ERROR_LENGTH
    from outbox.storage.claims import storable_error

    long = storable_error("a" * (MAX_ERROR_LENGTH + 10))
    assert len(long) == MAX_ERROR_LENGTH and long.endswith("a…")
    assert storable_error("x\x00y\ud800") == "xy?"
