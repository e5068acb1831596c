"""Claims while vacuum cannot keep up: the walk frontier, the keys' floors and lease log,
migrations 0006 and 0007.

A snapshot held open (``pg_dump``, a long report) keeps every row version newer than it,
and their index entries, until it ends. These tests hold one for real and check what a
claim reads (shared buffers, from ``EXPLAIN (ANALYZE, BUFFERS)``), which claim what, and
that migrations ``outbox_0006`` and ``outbox_0007`` run and roll back beside rows in flight.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import NewMessage, async_database_url, enqueue_many
from outbox.primitives.errors import InvalidArgumentError
from outbox.primitives.messages import ClaimedMessage
from outbox.storage.claims import (
    claim_batch,
    claim_statement,
    mark_published,
    release,
    tidy_keys,
)
from outbox.storage.frontier import ClaimFrontier
from outbox.storage.migrate import downgrade, upgrade
from tests.conftest import query

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clean(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE outbox, outbox_keys, outbox_key_leases")
    return engine


@pytest.fixture
async def held_snapshot(database_url: str) -> AsyncIterator[None]:
    """A REPEATABLE READ transaction that has read the outbox, as pg_dump holds one."""
    holder = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    transaction = holder.transaction(isolation="repeatable_read")
    await transaction.start()
    await holder.fetchval("SELECT count(*) FROM outbox")
    try:
        yield
    finally:
        await transaction.rollback()
        await holder.close()


async def add(engine: AsyncEngine, count: int, keys: int | None = None) -> list[int]:
    async with engine.begin() as conn:
        return await enqueue_many(
            conn,
            [
                NewMessage("chat.message", {"n": n}, key=None if keys is None else f"k{n % keys}")
                for n in range(count)
            ],
        )


async def deliver_all(engine: AsyncEngine, frontier: ClaimFrontier, ordered: bool) -> int:
    """Claim and publish until nothing is claimable; returns how many were delivered."""
    delivered = 0
    while claimed := await claim_batch(
        engine, limit=100, lock_seconds=30, worker_id="w", ordered=ordered, frontier=frontier
    ):
        await mark_published(engine, claimed, worker_id="w")
        delivered += len(claimed)
    return delivered


WALKED_INDEXES = {"ix_outbox_claimable", "ix_outbox_key_order"}
KEY_TABLES = {"outbox_keys", "outbox_key_leases"}
READS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Seq Scan"}


async def walked(engine: AsyncEngine, ordered: bool, frontier: ClaimFrontier | None) -> int:
    """Shared buffers one 100-row claim reads in the indexes it walks (the claim index, the
    keys' order) and the rows they lead to, and in the keys' tables (their leases, their
    holds), which every claim reads once per key (run, then rolled back)."""
    statement, values = claim_statement(
        limit=100,
        lock_seconds=30,
        worker_id="probe",
        ordered=ordered,
        since=None if frontier is None else frontier.since,
    )
    async with engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        bound = compiled.construct_params(dict(values))
        params = tuple(bound[name] for name in compiled.positiontup or ())
        result = await conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled.string}", params
        )
        raw = result.scalar_one()
        await conn.rollback()
    return _walked((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


def _walked(node: dict[str, Any]) -> int:
    own = 0
    if node.get("Index Name") in WALKED_INDEXES or (
        node.get("Relation Name") in KEY_TABLES and node["Node Type"] in READS
    ):
        own = int(node["Shared Hit Blocks"]) + int(node.get("Shared Read Blocks", 0))
    return own + sum(_walked(child) for child in node.get("Plans", []))


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_what_a_claim_reads_does_not_grow_with_what_was_delivered_under_a_held_snapshot(
    clean: AsyncEngine, held_snapshot: None, ordered: bool
) -> None:
    """While a snapshot is held, 1,000 then 6,000 messages (10 keys) are delivered: a claim
    from its frontier (and, ordered, from its keys' floors) reads the same after both; a
    walk from the start reads every entry the delivered rows left behind."""
    frontier = ClaimFrontier(lookback_seconds=0, full_walk_seconds=3600)
    keys = 10 if ordered else None
    assert frontier.next_start() is None  # the first claim walks from the start
    reads = []
    for rounds in (10, 50):
        for _ in range(rounds):
            await add(clean, 100, keys)
            assert await deliver_all(clean, frontier, ordered) == 100
        await add(clean, 100, keys)
        reads.append((await walked(clean, ordered, frontier), await walked(clean, ordered, None)))
        assert await deliver_all(clean, frontier, ordered) == 100
    (frontier_early, start_early), (frontier_late, start_late) = reads
    assert frontier_late <= frontier_early + 10, reads
    assert start_late >= start_early + 50, reads  # the snapshot did hold the dead entries


async def test_a_claim_whose_pool_holds_only_keys_in_flight_scans_no_keys(
    clean: AsyncEngine, held_snapshot: None
) -> None:
    """The usual state at a steady rate: the claimable rows in view are all of keys another
    worker has in flight. The walk saw every claimable row, so the claim takes nothing and
    does not scan the keys (a scan that, under a held snapshot, reads through every key's
    dead entries)."""
    frontier = ClaimFrontier(lookback_seconds=0, full_walk_seconds=3600)
    for _ in range(10):
        await add(clean, 100, keys=10)
        assert await deliver_all(clean, frontier, ordered=True) == 100
    await add(clean, 20, keys=10)  # two rows per key
    first = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="a", ordered=True)
    assert len(first) == 10 and len({m.key for m in first}) == 10  # one row of each key
    statement, values = claim_statement(limit=10, lock_seconds=30, worker_id="b", ordered=True)
    async with clean.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        bound = compiled.construct_params(dict(values))
        params = tuple(bound[name] for name in compiled.positiontup or ())
        result = await conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled.string}", params
        )
        raw = result.scalar_one()
        await conn.rollback()
    executed = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    assert int(executed["Actual Rows"]) == 1  # the frontier's row alone: nothing claimed
    assert _rows_of(executed, "Recursive Union") == [0]  # the key scan found no key


def _rows_of(node: dict[str, Any], node_type: str) -> list[int]:
    found = [int(node["Actual Rows"])] if node["Node Type"] == node_type else []
    for child in node.get("Plans", []):
        found += _rows_of(child, node_type)
    return found


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_eight_claimers_with_frontiers_claim_every_row_exactly_once(
    clean: AsyncEngine, held_snapshot: None, ordered: bool
) -> None:
    """8 claimers, each with its own frontier, while a producer commits 2,000 rows over 20
    keys, one transaction in ten held open past the lookback (its rows fall behind the
    frontiers): every row is claimed exactly once, ordered or not."""
    committed: list[int] = []
    claimed: list[ClaimedMessage] = []
    producing = True

    async def produce() -> None:
        nonlocal producing
        for n in range(200):
            async with clean.connect() as conn:
                committed.extend(
                    await enqueue_many(
                        conn,
                        [
                            NewMessage("chat.message", {"n": n}, key=f"k{(n + i) % 20}")
                            for i in range(10)
                        ],
                    )
                )
                if n % 10 == 0:
                    await anyio.sleep(0.3)  # committed 0.3 s after its insert: a late commit
                await conn.commit()
        producing = False

    async def claimer(name: str) -> None:
        frontier = ClaimFrontier(lookback_seconds=0.1, full_walk_seconds=0.5)
        idle_since = None
        while True:
            batch = await claim_batch(
                clean, limit=20, lock_seconds=30, worker_id=name, ordered=ordered, frontier=frontier
            )
            claimed.extend(batch)
            if batch:
                await mark_published(clean, batch, worker_id=name)
                idle_since = None
            elif not producing:
                idle_since = idle_since or anyio.current_time()
                if anyio.current_time() - idle_since > 1.5:  # three full walks found nothing
                    return
            await anyio.sleep(0.01)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            for n in range(8):
                group.start_soon(claimer, f"w{n}")
    ids = [m.id for m in claimed]
    assert len(ids) == len(set(ids)) == 2_000
    assert sorted(ids) == sorted(committed)
    if ordered:  # one batch per key at a time: positions increase per key in claim order
        last: dict[str, int] = {}
        for message in claimed:
            assert message.seq is not None and message.key is not None
            assert message.seq > last.get(message.key, 0)
            last[message.key] = message.seq


async def test_the_keys_floors_follow_their_batches(clean: AsyncEngine) -> None:
    """Each lease records where its key's live rows start: the batch's first position, and
    past the last unpositioned row it took."""
    ids = await add(clean, 6, keys=1)
    first = await claim_batch(clean, limit=3, lock_seconds=30, worker_id="w", ordered=True)
    assert [m.id for m in first] == ids[:3]
    # All new positions: the floor is the lease number, drawn just before them.
    assert await floors(clean) == (first[0].seq - 1, ids[2] + 1)
    await mark_published(clean, first, worker_id="w")
    second = await claim_batch(clean, limit=3, lock_seconds=30, worker_id="w", ordered=True)
    assert [m.id for m in second] == ids[3:]
    assert await floors(clean) == (second[0].seq - 1, ids[5] + 1)


async def floors(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(
            "SELECT floor_seq, floor_id FROM outbox_key_leases WHERE NOT superseded"
        )
        ((floor_seq, floor_id),) = result.all()
    return int(floor_seq), int(floor_id)


async def test_a_row_that_commits_behind_the_frontier_waits_for_the_next_full_walk(
    clean: AsyncEngine,
) -> None:
    """A row whose next_attempt_at is older than the frontier (a late commit; here a past
    available_at) is not seen from the frontier, and is claimed by the next walk from the
    start, ``full_walk_seconds`` later."""
    clock = FakeClock()
    frontier = ClaimFrontier(lookback_seconds=5, full_walk_seconds=10, clock=clock)
    (now_id,) = await add(clean, 1)
    claimed = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier)
    assert [m.id for m in claimed] == [now_id]
    async with clean.begin() as conn:
        (late,) = await enqueue_many(
            conn,
            [
                NewMessage(
                    "chat.message", {}, available_at=datetime.now(UTC) - timedelta(minutes=10)
                )
            ],
        )
    clock.now = 9.0
    assert (
        await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier) == []
    )
    clock.now = 10.0
    claimed = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier)
    assert [m.id for m in claimed] == [late]


async def test_a_released_row_is_due_now_so_the_frontier_never_passes_it(
    clean: AsyncEngine,
) -> None:
    """A row handed back after the frontier moved past its old time is claimed by the next
    claim (at its old time it would wait for the next walk from the start)."""
    frontier = ClaimFrontier(lookback_seconds=0, full_walk_seconds=3600)
    (first,) = await add(clean, 1)
    held = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier)
    assert [m.id for m in held] == [first]
    await anyio.sleep(0.05)
    (second,) = await add(clean, 1)
    claimed = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier)
    assert [m.id for m in claimed] == [second]
    assert frontier.since is not None and frontier.since > held[0].next_attempt_at
    await release(clean, held, worker_id="w")
    again = await claim_batch(clean, limit=10, lock_seconds=30, worker_id="w", frontier=frontier)
    assert [m.id for m in again] == [first]


@pytest.mark.parametrize(
    "settings",
    [{"lookback_seconds": -1}, {"full_walk_seconds": 0}, {"lookback_seconds": float("nan")}],
)
def test_a_frontier_refuses_bad_settings(settings: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        ClaimFrontier(**settings)


async def _up_down_up_beside_an_older_workers_batch(
    engine: AsyncEngine, database_url: str, previous: str
) -> list[int]:
    """On ``previous``: 4 rows of key ``room``, the first 2 in flight under an older
    worker's lease (written by hand, its key row in ``outbox_keys``); then, while a
    producer's transaction with a fifth row is open, migrate up, down to ``previous`` and up
    again (at most 30 s: nothing may wait for the producer). Returns the 4 rows' ids."""
    async with engine.begin() as conn:
        ids = await enqueue_many(
            conn, [NewMessage("chat.message", {"n": n}, key="room") for n in range(4)]
        )
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "UPDATE outbox SET status = 'in_progress', seq = nextval('outbox_seq'),"
            " locked_by = 'old', locked_until = now() + interval '1 minute',"
            " lease_token = gen_random_uuid(), attempts = 1 WHERE id = ANY($1)",
            (ids[:2],),
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox_keys (key, inflight, locked_until, lease_no)"
            " VALUES ('room', 2, now() + interval '1 minute', nextval('outbox_seq'))"
        )
    async with engine.connect() as producer:
        await enqueue_many(producer, [NewMessage("chat.message", {}, key="room")])
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(upgrade, database_url)
            await anyio.to_thread.run_sync(downgrade, database_url, previous)
            await anyio.to_thread.run_sync(upgrade, database_url)
        await producer.commit()
    return ids


def test_migration_0006_runs_up_and_down_beside_rows_in_flight(empty_database: str) -> None:
    """From 0005 with a producer's transaction open, a key leased and rows in progress: up
    and down do not wait for the producer (the catalog changes take no lock on the rows'
    tables a producer needs), and nothing changes in the rows."""
    upgrade(empty_database, "outbox_0005")

    async def scenario() -> None:
        engine = create_async_engine(async_database_url(empty_database))
        try:
            await _up_down_up_beside_an_older_workers_batch(engine, empty_database, "outbox_0005")
        finally:
            await engine.dispose()

    anyio.run(scenario)
    rows = query(empty_database, "SELECT status, count(*) FROM outbox GROUP BY status ORDER BY 1")
    assert rows == [("in_progress", 2), ("pending", 3)]
    assert query(empty_database, "SELECT inflight, floor_seq FROM outbox_keys") == [(2, None)]
    ((options,),) = query(
        empty_database, "SELECT reloptions FROM pg_class WHERE relname = 'outbox'"
    )
    assert "autovacuum_vacuum_scale_factor=0.01" in list(options)  # type: ignore[arg-type]


def test_migration_0007_runs_beside_an_older_workers_batch_which_new_claims_respect(
    empty_database: str,
) -> None:
    """From 0006 with a producer's transaction open and an older worker's batch in flight
    (its lease in ``outbox_keys``): up, down and up again do not wait for the producer. A
    claim of this version then leaves the key alone while that batch is in flight (its
    first row is), takes the key's next rows in order once it is acknowledged, and
    housekeeping deletes the older worker's key row."""
    upgrade(empty_database, "outbox_0006")

    async def scenario() -> None:
        engine = create_async_engine(async_database_url(empty_database))
        try:
            ids = await _up_down_up_beside_an_older_workers_batch(
                engine, empty_database, "outbox_0006"
            )

            def claim() -> Any:
                return claim_batch(engine, limit=10, lock_seconds=30, worker_id="new", ordered=True)

            assert await claim() == []  # the older worker's batch is in flight
            async with engine.begin() as conn:  # which it acknowledges
                await conn.exec_driver_sql(
                    "UPDATE outbox SET status = 'published', published_at = now(),"
                    " locked_by = NULL, locked_until = NULL, lease_token = NULL"
                    " WHERE id = ANY($1)",
                    (ids[:2],),
                )
            claimed = await claim()
            assert [m.id for m in claimed] == [*ids[2:], ids[-1] + 1]
            seqs = [m.seq for m in claimed]
            assert seqs == sorted(seqs)
            assert await tidy_keys(engine, idle_seconds=60) == 1  # the older worker's row
        finally:
            await engine.dispose()

    anyio.run(scenario)
    assert query(empty_database, "SELECT count(*) FROM outbox_keys") == [(0,)]
    assert query(empty_database, "SELECT key, after_lease FROM outbox_key_leases") == [("room", 0)]
