"""claim_batch: exactly-once under concurrency, prefix filters, delays and order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import InvalidArgumentError, NewMessage, claim_batch, enqueue_many

pytestmark = pytest.mark.anyio


async def add(engine: AsyncEngine, *types: str) -> list[int]:
    async with engine.begin() as conn:
        return await enqueue_many(conn, [NewMessage(t, {"t": t}) for t in types])


async def claim(engine: AsyncEngine, limit: int = 1000, **kwargs: object) -> list[int]:
    claimed = await claim_batch(
        engine,
        limit=limit,
        lock_seconds=30,
        worker_id="w",
        **kwargs,  # type: ignore[arg-type]
    )
    return [m.id for m in claimed]


TYPES = ("message.created", "room.updated", "document.preprocess.v1", "message.deleted")


@pytest.mark.parametrize(
    ("filters", "wanted"),
    [
        ({}, set(TYPES)),
        ({"exclude_type_prefix": "document."}, set(TYPES) - {"document.preprocess.v1"}),
        ({"include_type_prefix": ["message.", "room."]}, set(TYPES) - {"document.preprocess.v1"}),
        # A quarter of the rows: a 50-row claim's 150-row walk finds too few, so the claims
        # go through the per-type merge.
        ({"include_type_prefix": "room."}, {"room.updated"}),
    ],
    ids=["unfiltered", "exclude", "include", "include-rare"],
)
async def test_eight_concurrent_claimers_take_every_id_exactly_once(
    engine: AsyncEngine, filters: dict[str, object], wanted: set[str]
) -> None:
    async with engine.begin() as conn:
        ids = await enqueue_many(
            conn, [NewMessage(TYPES[i % len(TYPES)], {"i": i}) for i in range(10_000)]
        )
    expected = [id_ for i, id_ in enumerate(ids) if TYPES[i % len(TYPES)] in wanted]
    per_worker: dict[str, list[int]] = {f"w{n}": [] for n in range(8)}

    async def worker(name: str) -> None:
        # Each claimer has its own connection (the engine's pool hands out separate ones).
        while batch := await claim_batch(
            engine,
            limit=50,
            lock_seconds=60,
            worker_id=name,
            **filters,  # type: ignore[arg-type]
        ):
            assert all(m.locked_by == name and m.attempts == 1 for m in batch)
            assert {m.type for m in batch} <= wanted
            per_worker[name].extend(m.id for m in batch)

    async with anyio.create_task_group() as tg:
        for name in per_worker:
            tg.start_soon(worker, name)

    claimed = [id_ for ids in per_worker.values() for id_ in ids]
    assert len(claimed) == len(expected)
    assert sorted(claimed) == expected
    assert sum(1 for ids in per_worker.values() if ids) >= 2  # the work really was shared


@pytest.mark.parametrize(
    "second_claim",
    [{"exclude_type_prefix": "document."}, {}],
    ids=["filtered", "unfiltered"],
)
async def test_a_claim_held_open_locks_only_the_rows_it_claimed(
    engine: AsyncEngine, second_claim: dict[str, object]
) -> None:
    """With many busy types, a filtered claim must not hold more locks than it claims."""
    async with engine.begin() as conn:
        await enqueue_many(conn, [NewMessage(f"chat.type{i % 50}", {}) for i in range(500)])
    async with engine.connect() as first:
        held = await claim_batch(
            first, limit=100, lock_seconds=30, worker_id="a", exclude_type_prefix="document."
        )
        # The first claimer's transaction is still open: its row locks are still held.
        other = await claim_batch(
            engine,
            limit=100,
            lock_seconds=30,
            worker_id="b",
            **second_claim,  # type: ignore[arg-type]
        )
        await first.commit()
    assert len(held) == 100 and len(other) == 100
    assert not {m.id for m in held} & {m.id for m in other}


async def test_claim_marks_rows_in_progress_with_a_lease(engine: AsyncEngine) -> None:
    [id_] = await add(engine, "message.created")
    now = datetime.now(UTC)
    [message] = await claim_batch(engine, limit=5, lock_seconds=12.5, worker_id="w1", now=now)
    assert (message.id, message.attempts, message.locked_by) == (id_, 1, "w1")
    assert message.locked_until == now + timedelta(seconds=12.5)
    assert message.payload == {"t": "message.created"}
    assert await claim(engine) == []  # in progress: nobody else gets it


async def test_rows_come_oldest_first_and_limit_is_respected(engine: AsyncEngine) -> None:
    ids = await add(engine, *["message.created"] * 5)
    assert await claim(engine, limit=2) == ids[:2]
    assert await claim(engine, limit=2) == ids[2:4]
    assert await claim(engine, limit=2) == ids[4:]


async def test_a_row_due_earlier_is_claimed_first(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        late, early = await enqueue_many(
            conn,
            [
                NewMessage("a.b", {}, available_at=now - timedelta(seconds=5)),
                NewMessage("a.b", {}, available_at=now - timedelta(seconds=60)),
            ],
        )
    assert await claim(engine) == [early, late]


async def test_delayed_rows_are_not_claimed_before_their_time(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        [delayed] = await enqueue_many(conn, [NewMessage("a.b", {}, delay=30)])
    assert await claim(engine, now=now + timedelta(seconds=20)) == []
    assert await claim(engine, now=now + timedelta(seconds=31)) == [delayed]


async def test_include_prefix_takes_only_those_types(engine: AsyncEngine) -> None:
    chat, doc1, room, doc2 = await add(
        engine, "message.created", "document.preprocess.v1", "room.updated", "document.x"
    )
    assert await claim(engine, include_type_prefix="document.") == [doc1, doc2]
    assert await claim(engine, include_type_prefix="document.") == []
    assert await claim(engine) == [chat, room]


async def test_exclude_prefix_leaves_those_types_alone(engine: AsyncEngine) -> None:
    chat, doc, room, documents = await add(
        engine, "message.created", "document.preprocess.v1", "room.updated", "documents.other"
    )
    # "documents.other" does not start with "document." and so is not excluded.
    assert await claim(engine, exclude_type_prefix="document.") == [chat, room, documents]
    assert await claim(engine, exclude_type_prefix="document.") == []
    assert await claim(engine) == [doc]


async def test_underscore_and_percent_in_a_prefix_match_only_themselves(
    engine: AsyncEngine,
) -> None:
    literal_, wild, pct, pct_wild = await add(
        engine, "a_b.created", "axb.created", "50%.off", "50x.off"
    )
    assert await claim(engine, include_type_prefix="a_b.") == [literal_]
    assert await claim(engine, include_type_prefix="50%") == [pct]
    assert await claim(engine, exclude_type_prefix=["a_", "50%"]) == [wild, pct_wild]


async def test_several_prefixes_and_include_with_exclude(engine: AsyncEngine) -> None:
    msg, room, doc, doc_internal, audit = await add(
        engine,
        "message.created",
        "room.updated",
        "document.preprocess.v1",
        "document.internal.reindex",
        "audit.logged",
    )
    assert await claim(
        engine, include_type_prefix=["document.", "room."], exclude_type_prefix="document.internal."
    ) == [room, doc]
    assert await claim(engine, exclude_type_prefix=["message.", "audit."]) == [doc_internal]
    assert await claim(engine, include_type_prefix="message.", exclude_type_prefix="message.") == []
    assert await claim(engine) == [msg, audit]


async def test_behind_an_older_backlog_of_excluded_types_the_oldest_wanted_come_first(
    engine: AsyncEngine,
) -> None:
    """The walk (3 x limit) meets only excluded rows, so the claim reads the wanted types one
    by one: still exact, oldest first, literal prefixes, and types above every prefix."""
    await add(engine, *(["document.preprocess.v1"] * 12))
    top = chr(0x10FFFF) * 3 + ".event"  # above any finite prefix's range
    room, pct, wild, high, chat = await add(
        engine, "room.updated", "50%.off", "50x.off", top, "message.created"
    )
    assert await claim(engine, limit=2, exclude_type_prefix=["document.", "50%"]) == [room, wild]
    assert await claim(engine, limit=2, exclude_type_prefix=["document.", "50%"]) == [high, chat]
    assert await claim(engine, limit=2, exclude_type_prefix=["document.", "50%"]) == []
    assert await claim(engine, limit=2, include_type_prefix="50%") == [pct]


async def test_a_filter_of_up_to_a_hundred_prefixes_is_one_cheap_statement(
    engine: AsyncEngine,
) -> None:
    chat, doc = await add(engine, "message.created", "document.preprocess.v1")
    many = [f"unused{n}." for n in range(99)]
    assert await claim(engine, exclude_type_prefix=[*many, "document."]) == [chat]
    with pytest.raises(InvalidArgumentError, match="at most 100 type prefixes"):
        await claim(engine, exclude_type_prefix=[*many, "document.", "more."])
    assert await claim(engine, include_type_prefix=many, exclude_type_prefix="x") == []
    assert await claim(engine) == [doc]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": 0}, "limit must be an integer from 1 to 10000"),
        ({"limit": 10_001}, "limit must be an integer from 1 to 10000"),
        ({"lock_seconds": 0}, "lock_seconds must be > 0"),
        ({"worker_id": ""}, "worker_id must be a non-empty string"),
        ({"include_type_prefix": ""}, "type prefixes must be non-empty strings"),
        ({"exclude_type_prefix": ["ok.", 3]}, "type prefixes must be non-empty strings"),
        ({"now": datetime(2030, 1, 1)}, "now must be a timezone-aware datetime"),
    ],
)
async def test_bad_claim_arguments_are_clear_errors(
    engine: AsyncEngine, kwargs: dict[str, object], error: str
) -> None:
    args: dict[str, object] = {"limit": 10, "lock_seconds": 30, "worker_id": "w", **kwargs}
    with pytest.raises(InvalidArgumentError, match=error):
        await claim_batch(engine, **args)  # type: ignore[arg-type]


async def test_a_row_no_reader_can_decode_dies_alone_and_its_batch_is_claimed(
    engine: AsyncEngine,
) -> None:
    """Another producer's row holding a 5,000-digit integer (valid jsonb, refused by Python's
    JSON reader): claimed with healthy rows, it goes dead with the reason; they are returned."""
    first = (await add(engine, "message.created"))[0]
    async with engine.begin() as conn:
        bad = (
            await conn.exec_driver_sql(
                "INSERT INTO outbox (type, payload) VALUES"
                " ('message.created', ('{\"n\": 1' || repeat('0', 5000) || '}')::jsonb)"
                " RETURNING id"
            )
        ).scalar_one()
    last = (await add(engine, "message.created"))[0]
    claimed = await claim_batch(engine, limit=10, lock_seconds=30, worker_id="w")
    assert [m.id for m in claimed] == [first, last]
    assert [m.payload for m in claimed] == [{"t": "message.created"}] * 2
    async with engine.connect() as conn:
        status, error = (
            await conn.exec_driver_sql("SELECT status, error FROM outbox WHERE id = $1", (bad,))
        ).one()
    assert status == "dead"
    assert error.startswith("undecodable payload: ValueError: Exceeds the limit (4300 digits)")
