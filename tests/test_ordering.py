"""Per-key order in the storage layer: positions, key leases, failures, the reaper, races.

Real PostgreSQL; the claims are the library's own calls with ``ordered=True``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox import (
    DELIVERED,
    NOT_ATTEMPTED,
    ClaimedMessage,
    GiveUpError,
    NewMessage,
    PerMessage,
    Retry,
    RetryLaterError,
    StartupError,
    claim_batch,
    enqueue,
    enqueue_many,
    mark_dead,
    mark_published,
    reap_expired_locks,
    release,
    reschedule,
)
from outbox.runtime.settings import WorkerSettings, load_settings
from outbox.runtime.worker import Worker
from outbox.storage.admin import DeadFilter, retry_dead
from outbox.storage.claims import tidy_keys
from outbox.storage.migrate import upgrade
from outbox.storage.pool import create_pool
from outbox.storage.stats import stats
from tests.workerproc import running

pytestmark = pytest.mark.anyio


async def add(engine: AsyncEngine, *keys: str | None) -> list[int]:
    """One message per key given, in one transaction, in that order."""
    async with engine.begin() as conn:
        return await enqueue_many(
            conn, [NewMessage("chat.message", {"n": n}, key=key) for n, key in enumerate(keys)]
        )


async def claim(
    engine: AsyncEngine, worker: str = "w1", limit: int = 100, **kw: object
) -> list[ClaimedMessage]:
    return await claim_batch(
        engine, limit=limit, lock_seconds=30, worker_id=worker, ordered=True, **kw
    )


def ids(messages: list[ClaimedMessage]) -> list[int]:
    return [m.id for m in messages]


async def key_rows(engine: AsyncEngine) -> dict[str, tuple[int, int | None]]:
    """key -> (rows of an ordered batch in flight, held_by), for the keys with rows in
    flight or a row in ``outbox_keys``."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT key, count(o.id) AS inflight, max(k.held_by) AS held_by"
                " FROM (SELECT id, key FROM outbox WHERE status = 'in_progress'"
                "       AND seq IS NOT NULL) o"
                " FULL JOIN outbox_keys k USING (key) GROUP BY key"
            )
        )
        return {row.key: (row.inflight, row.held_by) for row in rows}


async def leases(engine: AsyncEngine) -> dict[str, list[tuple[int, bool]]]:
    """key -> its leases ``(after_lease, superseded)``, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT key, after_lease, superseded FROM outbox_key_leases"
                " ORDER BY key, after_lease"
            )
        )
        found: dict[str, list[tuple[int, bool]]] = {}
        for row in rows:
            found.setdefault(row.key, []).append((row.after_lease, row.superseded))
        return found


async def lease_no(engine: AsyncEngine, key: str) -> int:
    """The number of ``key``'s latest lease."""
    async with engine.connect() as conn:
        number = await conn.scalar(
            text(
                "SELECT lease_no FROM outbox_key_leases WHERE key = :key"
                " ORDER BY after_lease DESC LIMIT 1"
            ),
            {"key": key},
        )
    assert isinstance(number, int)
    return number


async def test_positions_follow_commit_order_and_an_open_transaction_holds_nothing_back(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as held:
        await held.begin()
        late = await enqueue(held, "chat.message", {"n": "late"}, key="R")
        early = await add(engine, "R", "R")
        assert late < early[0]  # the open transaction took the lower id

        first = await claim(engine)
        assert ids(first) == early
        assert first[0].seq is not None and first[1].seq is not None
        assert first[0].seq < first[1].seq
        assert (await mark_published(engine, first, worker_id="w1")).ok
        await held.commit()

    (last,) = await claim(engine)
    assert last.id == late
    assert last.seq is not None and last.seq > first[1].seq


async def test_one_batch_per_key_in_flight_until_every_row_is_acknowledged(
    engine: AsyncEngine,
) -> None:
    r1, s1, r2, r3, r4 = await add(engine, "R", "S", "R", "R", "R")
    # Of the two free keys in sight, a claim takes half (the oldest): the other is left
    # for another worker.
    batch = await claim(engine, limit=3)
    assert ids(batch) == [r1, r2, r3]
    assert ids(await claim(engine, "w2")) == [s1]
    assert await key_rows(engine) == {"R": (3, None), "S": (1, None)}
    assert await claim(engine, "w3") == []  # both keys leased

    assert (await mark_published(engine, [batch[0]], worker_id="w1")).ok
    assert await claim(engine, "w3") == []  # two of R's rows are still in flight
    assert (await mark_published(engine, batch[1:], worker_id="w1")).ok
    assert "R" not in await key_rows(engine)

    rest = await claim(engine, "w3")
    assert ids(rest) == [r4]
    seqs = [m.seq for m in [*batch, *rest]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


async def test_a_claim_spreads_over_many_keys_round_by_round(engine: AsyncEngine) -> None:
    written = await add(engine, *[f"k{n % 8}" for n in range(24)])
    batch = await claim(engine, limit=6)
    # As many keys as the limit are ready: each gives its first row.
    assert sorted(ids(batch)) == written[0:6]


async def test_a_few_keys_with_backlogs_are_shared_between_workers(engine: AsyncEngine) -> None:
    written = await add(engine, *["a", "b"] * 10)
    # Two keys ready, fewer than the limit, with more rows in sight than the limit: half of
    # the keys (the oldest) is taken, the other left for another worker.
    first = await claim(engine, limit=4)
    assert ids(first) == written[0:8:2]
    second = await claim(engine, "w2", limit=4)
    assert ids(second) == written[1:9:2]


async def test_unkeyed_rows_are_claimed_as_before_beside_keyed_ones(engine: AsyncEngine) -> None:
    a, r, b = await add(engine, None, "R", None)
    batch = await claim(engine)
    assert sorted(ids(batch)) == [a, r, b]
    assert {m.id: m.seq for m in batch if m.key is None} == {a: None, b: None}
    # Unordered claims leave keys and positions alone.
    (c,) = await add(engine, "T")
    (unordered,) = await claim_batch(engine, limit=10, lock_seconds=30, worker_id="w2")
    assert (unordered.id, unordered.seq) == (c, None)
    assert "T" not in await leases(engine)


async def test_a_retry_waiting_at_the_head_holds_back_only_its_key(engine: AsyncEngine) -> None:
    r1, r2, r3, s1 = await add(engine, "R", "R", "R", "S")
    claimed = await claim(engine)
    assert ids(claimed) == [r1, r2, r3, s1]  # few rows in sight: every key at once
    batch = claimed[:3]
    # As the runtime does: the head failed, the rest of its key handed back unattempted.
    await reschedule(engine, batch[:1], worker_id="w1", error="boom", delay=3600)
    await release(engine, batch[1:], worker_id="w1")
    await mark_published(engine, claimed[3:], worker_id="w1")
    s1 = (await add(engine, "S"))[0]
    (s2,) = await add(engine, "S")

    assert ids(await claim(engine)) == [s1, s2]  # R waits for its head; S flows
    later = await claim(engine, now=_in(hours=2))
    assert ids(later) == [r1, r2, r3]
    assert [m.seq for m in later] == [m.seq for m in batch]
    assert [m.attempts for m in later] == [2, 1, 1]  # the hand-back cost no attempt


async def test_a_dead_head_lets_its_key_move_on(engine: AsyncEngine) -> None:
    _r1, r2 = await add(engine, "R", "R")
    head, second = await claim(engine)
    await mark_dead(engine, [head], worker_id="w1", error="bad")
    await release(engine, [second], worker_id="w1")
    (again,) = await claim(engine)
    assert (again.id, again.seq) == (r2, second.seq)


async def test_a_held_key_waits_behind_its_dead_head_until_it_is_retried(
    engine: AsyncEngine,
) -> None:
    r1, r2 = await add(engine, "R", "R")
    head, second = await claim(engine)
    await mark_dead(engine, [head], worker_id="w1", error="bad", hold_keys=True)
    await release(engine, [second], worker_id="w1")
    assert await claim(engine) == []
    assert await key_rows(engine) == {"R": (0, r1)}
    assert (await stats(engine)).keys_held == 1

    await retry_dead(engine, DeadFilter(ids=(r1,)))
    assert await key_rows(engine) == {"R": (0, None)}
    assert await tidy_keys(engine, idle_seconds=5) == 1  # the released hold's row
    assert await key_rows(engine) == {}
    resumed = await claim(engine)
    # Nothing after the held head was delivered: both keep their positions, in order.
    assert [(m.id, m.seq) for m in resumed] == [(r1, head.seq), (r2, second.seq)]


async def test_a_retried_dead_message_of_a_key_that_moved_on_comes_after_it(
    engine: AsyncEngine,
) -> None:
    r1, _r2 = await add(engine, "R", "R")
    head, second = await claim(engine)
    await mark_dead(engine, [head], worker_id="w1", error="bad")
    await mark_published(engine, [second], worker_id="w1")
    await retry_dead(engine, DeadFilter(ids=(r1,)))
    (again,) = await claim(engine)
    assert again.id == r1
    assert again.seq is not None and second.seq is not None and again.seq > second.seq


async def test_a_reaped_batch_keeps_its_positions_and_frees_its_key(engine: AsyncEngine) -> None:
    await add(engine, "R", "R")
    crashed = await claim_batch(engine, limit=10, lock_seconds=1, worker_id="w1", ordered=True)
    reaped = await reap_expired_locks(engine, now=_in(seconds=10))
    assert reaped.requeued == frozenset(ids(crashed))
    assert await key_rows(engine) == {}
    again = await claim(engine, "w2", now=_in(seconds=10))
    assert [(m.id, m.seq) for m in again] == [(m.id, m.seq) for m in crashed]


async def test_tidy_deletes_old_superseded_leases_then_a_keys_last_one(
    engine: AsyncEngine,
) -> None:
    await add(engine, "R", "idle")
    first = await claim(engine)
    await mark_published(engine, first, worker_id="w1")
    first_lease = await lease_no(engine, "R")
    await add(engine, "R")
    second = await claim(engine)
    await mark_published(engine, second, worker_id="w1")
    assert await leases(engine) == {"R": [(0, True), (first_lease, False)], "idle": [(0, False)]}

    assert await tidy_keys(engine, idle_seconds=5) == 0  # nothing old enough yet
    # R's superseded lease and idle's only one; R's last one is its only one afterwards.
    assert await tidy_keys(engine, idle_seconds=5, now=_in(minutes=5)) == 2
    assert await leases(engine) == {"R": [(first_lease, False)]}
    assert await tidy_keys(engine, idle_seconds=5, now=_in(minutes=5)) == 1
    assert await leases(engine) == {}

    # A key without leases is read from its first entry: its order goes on.
    (r3,) = await add(engine, "R")
    (third,) = await claim(engine)
    assert third.id == r3
    assert third.seq is not None and second[0].seq is not None and third.seq > second[0].seq


async def _wait_until_a_session_waits_for_a_lock(engine: AsyncEngine) -> None:
    with anyio.fail_after(10):
        while True:
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                )
            if waiting:
                return
            await anyio.sleep(0.02)


async def _claim_while_blocked(
    engine: AsyncEngine, other: AsyncConnection, then: Callable[[], Awaitable[None]]
) -> list[ClaimedMessage]:
    """A claim (worker ``w2``) started while ``other``'s open transaction holds what it will
    wait for: once it waits, ``then()`` runs in ``other``, which then commits; returns the
    claim's batch."""
    results: list[list[ClaimedMessage]] = []

    async def claimer() -> None:
        results.append(await claim(engine, "w2"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(claimer)
        await _wait_until_a_session_waits_for_a_lock(engine)
        await then()
        await other.commit()
    return results[0]


async def status_of(engine: AsyncEngine, row_id: int) -> str | None:
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM outbox WHERE id = :id"), {"id": row_id})
    return None if status is None else str(status)


async def test_a_claim_leaves_a_key_alone_when_its_lease_was_superseded_since_its_snapshot(
    engine: AsyncEngine,
) -> None:
    """The claim saw lease L as R's latest; another lease supersedes L before the claim's
    update of L gets the row: the claim takes nothing of R (the other lease's rows may be
    ones its snapshot cannot see), and S goes as usual."""
    await add(engine, "R")
    (first,) = await claim(engine)
    await mark_published(engine, [first], worker_id="w1")
    r2, s1 = await add(engine, "R", "S")
    seen = await lease_no(engine, "R")
    async with engine.connect() as other:
        await other.begin()
        await other.execute(text("SELECT 1 FROM outbox_key_leases WHERE key = 'R' FOR UPDATE"))

        async def supersede() -> None:
            await other.execute(text("UPDATE outbox_key_leases SET superseded = true"))
            await other.execute(
                text(
                    "INSERT INTO outbox_key_leases"
                    " (key, after_lease, lease_no, floor_seq, leased_at)"
                    " VALUES ('R', :after, nextval('outbox_seq'), 0, now())"
                ),
                {"after": seen},
            )

        claimed = await _claim_while_blocked(engine, other, supersede)
    assert ids(claimed) == [s1]
    assert await status_of(engine, r2) == "pending"
    assert (await leases(engine))["R"] == [(0, True), (seen, False)]


async def test_two_claims_that_saw_no_lease_collide_on_the_keys_first(
    engine: AsyncEngine,
) -> None:
    """A first lease of R, not yet committed when the claim took its snapshot: the claim's
    own first lease waits for it, collides with it, and takes nothing of R."""
    r1, s1 = await add(engine, "R", "S")
    async with engine.connect() as other:
        await other.begin()
        await other.execute(
            text(
                "INSERT INTO outbox_key_leases (key, after_lease, lease_no, floor_seq, leased_at)"
                " VALUES ('R', 0, nextval('outbox_seq'), 0, now())"
            )
        )

        async def nothing_more() -> None:
            pass

        claimed = await _claim_while_blocked(engine, other, nothing_more)
    assert ids(claimed) == [s1]
    assert await status_of(engine, r1) == "pending"


async def test_eight_concurrent_claimers_never_hold_one_key_twice(
    engine: AsyncEngine, database_url: str
) -> None:
    rng = random.Random(7)
    keys = [f"k{n}" for n in range(40)]
    written: list[int] = []
    for _ in range(10):
        written += await add(engine, *(rng.choice([*keys, None]) for _ in range(100)))
    pool = await create_pool(database_url, max_size=8)
    holders: dict[str, str] = {}
    claimed: list[ClaimedMessage] = []
    done = anyio.Event()

    async def claimer(name: str) -> None:
        idle = 0
        while idle < 20:
            batch = await claim_batch(
                pool, limit=rng.randint(1, 30), lock_seconds=30, worker_id=name, ordered=True
            )
            idle = idle + 1 if not batch else 0
            for key in {m.key for m in batch if m.key is not None}:
                assert key not in holders, f"{key} held by {holders[key]} and {name}"
                holders[key] = name
            claimed.extend(batch)
            await anyio.sleep(rng.random() / 200)
            for key in {m.key for m in batch if m.key is not None}:
                del holders[key]
            assert (await mark_published(pool, batch, worker_id=name)).ok
            if len(claimed) == len(written):
                done.set()

    try:
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(claimer, f"c{n}")
    finally:
        await pool.close()
    assert sorted(ids(claimed)) == sorted(written)  # each exactly once
    by_key: dict[str, list[ClaimedMessage]] = {}
    for message in claimed:  # in claim order
        if message.key is not None:
            by_key.setdefault(message.key, []).append(message)
    for key, messages in by_key.items():
        # Every row was committed before the first claim: key order is id order.
        assert ids(messages) == sorted(ids(messages)), key
        seqs = [m.seq or 0 for m in messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), key


def _in(**delta: float) -> datetime:
    """Now plus ``delta``: the clock the library's ``now`` steps to."""
    return datetime.now(UTC) + timedelta(**delta)


# -- the runtime: a worker with ORDERING=key and a handler of our own -------------------------


class RoomHandler:
    """Delivers every message, except that ``fail`` ids fail (retry) the first ``times``."""

    name = "rooms"

    def __init__(self, fail: dict[int, int], outcome: str = "retry") -> None:
        self.fail = fail
        self.outcome = outcome
        self.delivered: list[ClaimedMessage] = []

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def handle(self, message: ClaimedMessage) -> None:
        if self.fail.get(message.id, 0) > 0:
            self.fail[message.id] -= 1
            if self.outcome == "dead":
                raise GiveUpError("rejected")
            raise RetryLaterError("not yet", delay=0.3)
        self.delivered.append(message)


def ordered_worker(database_url: str, handler: RoomHandler, **values: object) -> Worker:
    settings = load_settings(
        WorkerSettings,
        database_url=database_url,
        worker_id="ordered",
        ordering="key",
        poll_interval_ms=50,
        reap_interval_seconds=0.2,
        log_format="text",
        **values,
    )
    return Worker(PerMessage(handler, timeout=5), settings)


async def wait_for(engine: AsyncEngine, statuses: dict[int, str]) -> None:
    deadline = anyio.current_time() + 15
    while anyio.current_time() < deadline:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, status FROM outbox"))
            if {r.id: r.status for r in rows if r.id in statuses} == statuses:
                return
        await anyio.sleep(0.03)
    raise AssertionError(f"never reached {statuses}")


async def test_a_failing_head_delays_only_its_room_and_the_room_keeps_its_order(
    engine: AsyncEngine, database_url: str
) -> None:
    written = await add(engine, *(["R", "S"] * 5))
    r_ids = written[0::2]
    handler = RoomHandler({r_ids[0]: 2})
    async with running(ordered_worker(database_url, handler)):
        await wait_for(engine, dict.fromkeys(written, "published"))
    delivered = [m.id for m in handler.delivered]
    # S never waited for R's retries: all of S went before R's head got through.
    assert delivered.index(written[-1]) < delivered.index(r_ids[0])
    assert [i for i in delivered if i in r_ids] == r_ids
    r_seqs = [m.seq or 0 for m in handler.delivered if m.key == "R"]
    assert r_seqs == sorted(r_seqs)


async def test_a_dead_head_lets_its_room_move_on_in_order(
    engine: AsyncEngine, database_url: str
) -> None:
    r1, r2, r3 = await add(engine, "R", "R", "R")
    handler = RoomHandler({r1: 1}, outcome="dead")
    async with running(ordered_worker(database_url, handler)):
        await wait_for(engine, {r1: "dead", r2: "published", r3: "published"})
    assert [m.id for m in handler.delivered] == [r2, r3]


async def test_a_held_room_waits_behind_its_dead_head(
    engine: AsyncEngine, database_url: str
) -> None:
    r1, r2, s1 = await add(engine, "R", "R", "S")
    handler = RoomHandler({r1: 1}, outcome="dead")
    async with running(ordered_worker(database_url, handler, ordering_dead="hold")):
        await wait_for(engine, {r1: "dead", r2: "pending", s1: "published"})
        await anyio.sleep(0.3)
        await wait_for(engine, {r2: "pending"})  # still held
        await retry_dead(engine, DeadFilter(ids=(r1,)))
        await wait_for(engine, {r1: "published", r2: "published"})
    assert [m.id for m in handler.delivered if m.key == "R"] == [r1, r2]


@pytest.mark.parametrize("revision", ["outbox_0004", "outbox_0005", "outbox_0006"])
async def test_an_ordered_worker_on_an_older_schema_stops_at_start_naming_the_migration(
    empty_database: str, revision: str
) -> None:
    await anyio.to_thread.run_sync(upgrade, empty_database, revision)
    worker = ordered_worker(empty_database, RoomHandler({}), startup_timeout_seconds=5)
    with pytest.raises(ExceptionGroup) as raised:  # raised inside the worker's task group
        await worker.run()
    (error,) = raised.value.exceptions
    assert isinstance(error, StartupError), error
    assert (
        "ORDERING=key needs tables outbox_keys and outbox_key_leases"
        " (migrations outbox_0005 to outbox_0007)" in str(error)
    )


async def test_keys_behind_a_busy_keys_backlog_are_still_claimed(engine: AsyncEngine) -> None:
    """The oldest 1,000 rows are one key's, leased: the claim walks only them, then finds
    the other keys by a scan of the keys, taking turns from ``after_key``."""
    async with engine.begin() as conn:
        await enqueue_many(conn, [NewMessage("chat.message", {}, key="busy")] * 1000)
    others = await add(engine, "a", "b", "c", "d")
    busy = await claim(engine, limit=10)
    assert {m.key for m in busy} == {"busy"}
    first = await claim(engine, "w2", limit=2)
    assert [m.key for m in first] == ["a", "b"]
    turn = await claim(engine, "w3", limit=1, after_key="b")
    assert [m.key for m in turn] == ["c"]
    wrapped = await claim(engine, "w4", limit=5, after_key="c")
    assert sorted(m.id for m in wrapped) == [others[3]]  # "d", then around: a-c are leased


def _message(id_: int, key: str | None, seq: int | None) -> ClaimedMessage:
    now = datetime.now(UTC)
    return ClaimedMessage(id_, "t", key, {}, 1, now, now, "w", now, None, uuid.uuid4(), seq)


async def test_per_message_runs_a_keys_messages_in_turn_and_ends_within_its_timeout() -> None:
    started: list[int] = []
    running_keys: set[str] = set()

    class Slow:
        name = "slow"

        async def check(self) -> None:
            pass

        async def aclose(self) -> None:
            pass

        async def handle(self, message: ClaimedMessage) -> None:
            key = message.key or ""
            assert key not in running_keys, "two messages of one key at once"
            running_keys.add(key)
            started.append(message.id)
            try:
                if message.id == 21:
                    raise RetryLaterError("no")
                await anyio.sleep(0.3)
            finally:
                running_keys.discard(key)

    batch = [
        _message(1, "a", 1),
        _message(2, "a", 2),
        _message(3, "a", 3),
        _message(21, "b", 4),
        _message(22, "b", 5),
        _message(31, None, None),
    ]
    with anyio.fail_after(2):
        outcomes = await PerMessage(Slow(), timeout=0.5).handle_batch(batch)
    # a: the first delivered, the second cut off by the batch's timeout, the third not run;
    # b: its head failed, the rest waits behind it; the unkeyed message ran alongside.
    assert outcomes[0] == DELIVERED
    assert outcomes[1:3] == [NOT_ATTEMPTED, NOT_ATTEMPTED]
    assert outcomes[3] == Retry("no")
    assert outcomes[4] == NOT_ATTEMPTED
    assert outcomes[5] == DELIVERED
    assert sorted(started) == [1, 2, 21, 31]


async def test_an_undecodable_head_holds_its_key_and_what_follows_goes_back(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (type, key, payload) VALUES"
                " ('chat.message', 'R', ('{\"n\": ' || repeat('9', 5000) || '}')::jsonb),"
                " ('chat.message', 'R', '{}'), ('chat.message', 'S', '{}')"
            )
        )
    batch = await claim(engine, hold_keys=True)
    assert [m.key for m in batch] == ["S"]
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT status, attempts FROM outbox ORDER BY id"))).all()
    assert [tuple(r) for r in rows] == [("dead", 1), ("pending", 0), ("in_progress", 1)]
    assert (await key_rows(engine))["R"][1] == 1  # held behind row 1


async def test_the_rescue_scan_reads_past_keys_waiting_for_a_retry(engine: AsyncEngine) -> None:
    """The oldest rows are those of 8 keys whose heads wait for retries; behind them, in key
    order too, one key that can go: a claim of 2 still finds it."""
    blocked = [f"a{n}" for n in range(8)]
    await add(engine, *[k for k in blocked for _ in range(3)])
    heads = await claim(engine)
    assert {m.key for m in heads} == set(blocked)
    by_key: dict[str, list[ClaimedMessage]] = {}
    for message in heads:
        by_key.setdefault(message.key or "", []).append(message)
    for messages in by_key.values():
        await reschedule(engine, messages[:1], worker_id="w1", error="later", delay=3600)
        await release(engine, messages[1:], worker_id="w1")
    (ready,) = await add(engine, "z")
    assert ids(await claim(engine, "w2", limit=2)) == [ready]
