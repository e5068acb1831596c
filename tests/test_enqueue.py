"""enqueue / enqueue_many: visible exactly on commit, with every supported handle."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, RootModel
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from outbox import (
    InvalidMessageError,
    NewMessage,
    claim_batch,
    enqueue,
    enqueue_many,
    outbox_table,
)

pytestmark = pytest.mark.anyio


async def claim_ids(engine: AsyncEngine, **kwargs: object) -> list[int]:
    claimed = await claim_batch(engine, limit=1000, lock_seconds=30, worker_id="w", **kwargs)  # type: ignore[arg-type]
    return [m.id for m in claimed]


async def all_rows(engine: AsyncEngine) -> list[tuple[int, str, dict[str, object]]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(outbox_table.c.id, outbox_table.c.type, outbox_table.c.payload).order_by(
                outbox_table.c.id
            )
        )
        return [tuple(row) for row in result.all()]  # type: ignore[misc]


@pytest.fixture
def sync_engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    yield eng
    eng.dispose()


async def test_async_connection_rollback_is_never_claimable_commit_is(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        await enqueue(conn, "message.created", {"n": 1})
        assert await claim_ids(engine) == []  # not committed yet: invisible to workers
        await conn.rollback()
    assert await claim_ids(engine) == []
    assert await all_rows(engine) == []

    async with engine.begin() as conn:
        committed = await enqueue(conn, "message.created", {"n": 2})
    assert await claim_ids(engine) == [committed]


async def test_async_session_joins_the_callers_transaction(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        rolled_back = await enqueue(session, "message.created", {"n": 1})
        await session.rollback()
        kept = await enqueue(session, "message.created", {"n": 2})
        await session.commit()
    assert await all_rows(engine) == [(kept, "message.created", {"n": 2})]
    assert rolled_back != kept


async def test_sync_session_and_connection(engine: AsyncEngine, sync_engine: Engine) -> None:
    with Session(sync_engine) as session:
        session.begin()
        enqueue(session, "message.created", {"via": "session-rolled-back"})
        session.rollback()
        with session.begin():
            from_session = enqueue(session, "message.created", {"via": "session"})
    with sync_engine.begin() as conn:
        from_connection = enqueue_many(
            conn, [NewMessage("room.updated", {"via": "connection"}, key="r1")]
        )
    assert await all_rows(engine) == [
        (from_session, "message.created", {"via": "session"}),
        (from_connection[0], "room.updated", {"via": "connection"}),
    ]


class Nul(BaseModel):
    text: str


Items = RootModel[list[int]]


class Created(BaseModel):
    room_id: str
    at: datetime


async def test_pydantic_payload_is_stored_in_json_mode(engine: AsyncEngine) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with engine.begin() as conn:
        id_ = await enqueue(conn, "message.created", Created(room_id="r9", at=at), key="r9")
    [message] = await claim_batch(engine, limit=10, lock_seconds=30, worker_id="w")
    assert (message.id, message.key) == (id_, "r9")
    assert message.payload == {"room_id": "r9", "at": "2026-01-02T03:04:05Z"}


async def test_enqueue_many_returns_ids_in_the_order_given(engine: AsyncEngine) -> None:
    messages = [
        NewMessage("room.updated", {"i": 0}, key="a", dedupe_key="k0"),
        NewMessage("message.created", {"i": 1}, key="a"),
        NewMessage("room.updated", {"i": 2}, key="a", dedupe_key="k2"),
        NewMessage("message.created", {"i": 3}, key="a"),
    ]
    async with engine.begin() as conn:
        ids = await enqueue_many(conn, messages)
    assert ids == sorted(ids) and len(set(ids)) == 4  # ascending in input order
    rows = await all_rows(engine)
    assert [(id_, payload["i"]) for id_, _, payload in rows] == list(
        zip(ids, range(4), strict=True)
    )
    async with engine.begin() as conn:
        assert await enqueue_many(conn, []) == []


async def test_dedupe_key_returns_the_existing_row_and_inserts_nothing(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        first = await enqueue(conn, "document.preprocess.v1", {"v": 1}, dedupe_key="doc-1")
    async with engine.begin() as conn:
        again = await enqueue(conn, "document.preprocess.v1", {"v": 2}, dedupe_key="doc-1")
        batch = await enqueue_many(
            conn,
            [
                NewMessage("document.preprocess.v1", {"v": 3}, dedupe_key="doc-2"),
                NewMessage("document.preprocess.v1", {"v": 4}, dedupe_key="doc-1"),
                NewMessage("document.preprocess.v1", {"v": 5}, dedupe_key="doc-2"),
            ],
        )
    assert again == first
    assert batch[1] == first and batch[0] == batch[2] != first
    rows = await all_rows(engine)
    assert [(id_, payload) for id_, _, payload in rows] == [(first, {"v": 1}), (batch[0], {"v": 3})]


async def test_dedupe_key_of_a_rolled_back_row_is_free_again(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await enqueue(conn, "x.y", {}, dedupe_key="once")
        await conn.rollback()
    async with engine.begin() as conn:
        kept = await enqueue(conn, "x.y", {"kept": True}, dedupe_key="once")
    assert await all_rows(engine) == [(kept, "x.y", {"kept": True})]


async def test_delay_and_available_at_hold_messages_back(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        delayed = await enqueue(conn, "a.b", {}, delay=60)
        later = await enqueue(conn, "a.b", {}, available_at=now + timedelta(hours=1))
        due = await enqueue(conn, "a.b", {}, delay=timedelta(0))
    assert await claim_ids(engine) == [due]
    assert await claim_ids(engine, now=now + timedelta(seconds=61)) == [delayed]
    assert await claim_ids(engine, now=now + timedelta(hours=1, seconds=1)) == [later]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (NewMessage("", {}), "type must be a non-empty string"),
        (NewMessage(" a.b", {}), "without NUL or surrounding whitespace"),
        (NewMessage("a" * 256, {}), "at most 255 characters"),
        (NewMessage("a.b", [1, 2]), "payload must be a dict or a pydantic model, not list"),  # type: ignore[arg-type]
        (NewMessage("a.b", {"x": object()}), "payload is not JSON-serialisable"),
        (NewMessage("a.b", {"x": float("nan")}), "payload is not JSON-serialisable"),
        (NewMessage("a.b", {"x": "\x00"}), "payload contains NUL"),
        (NewMessage("a.b", {}, key=5), "key must be a string"),  # type: ignore[arg-type]
        (NewMessage("a.b", {}, delay=-1), "delay must be from 0 to 315360000 seconds"),
        (NewMessage("a.b", {}, delay=1e300), "delay must be from 0 to 315360000 seconds"),
        (NewMessage("a.b", Nul(text="a\x00b")), "payload contains NUL"),
        (NewMessage("a.b", Items([1, 2])), "payload must serialise to a JSON object"),
        (NewMessage("a.b", {}, delay="5"), "delay must be seconds or a timedelta"),  # type: ignore[arg-type]
        (
            NewMessage("a.b", {}, available_at=datetime(2030, 1, 1)),
            "available_at must be a timezone-aware datetime",
        ),
        (
            NewMessage("a.b", {}, delay=1, available_at=datetime.now(UTC)),
            "give delay or available_at, not both",
        ),
    ],
)
async def test_bad_messages_are_rejected_before_anything_is_written(
    engine: AsyncEngine, message: NewMessage, error: str
) -> None:
    async with engine.begin() as conn:
        with pytest.raises(InvalidMessageError, match=error):
            await enqueue_many(conn, [NewMessage("ok.first", {}), message])
    assert await all_rows(engine) == []


async def test_a_literal_backslash_u0000_is_not_mistaken_for_nul(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        id_ = await enqueue(conn, "a.b", {"path": "C:\\u0000dir"})
    assert await all_rows(engine) == [(id_, "a.b", {"path": "C:\\u0000dir"})]


async def test_concurrent_enqueues_of_one_dedupe_key_make_one_row(engine: AsyncEngine) -> None:
    async with engine.connect() as first, engine.connect() as second:
        first_id = await enqueue(first, "x.y", {"by": "first"}, dedupe_key="same")
        # The second insert waits on the first transaction's unique-index entry...
        waiting = anyio.Event()

        async def second_enqueue() -> int:
            waiting.set()
            return await enqueue(second, "x.y", {"by": "second"}, dedupe_key="same")

        async with anyio.create_task_group() as tg:
            result: list[int] = []

            async def run_second() -> None:
                result.append(await second_enqueue())
                await second.commit()

            tg.start_soon(run_second)
            await waiting.wait()
            await anyio.sleep(0.2)
            assert result == []  # ...until the first commits,
            await first.commit()
    # ...and then returns the committed row's id instead of inserting a second row.
    assert result == [first_id]
    assert await all_rows(engine) == [(first_id, "x.y", {"by": "first"})]


async def test_wrong_handle_type_is_a_clear_error() -> None:
    with pytest.raises(InvalidMessageError, match="db must be a SQLAlchemy Session"):
        enqueue("postgresql://nope", "a.b", {})  # type: ignore[call-overload]


def nested(depth: int) -> dict[str, object]:
    """A payload whose objects are nested ``depth`` levels deep (``{}`` is one level)."""
    payload: dict[str, object] = {}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


class Big(BaseModel):
    n: int


class Loose(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    x: float


class Text(BaseModel):
    s: str


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            NewMessage("a.b", {"a": [{"b": "x\ud800"}]}),
            r"payload contains a lone surrogate \(U\+D800\)",
        ),
        (NewMessage("a.b", {"a": {"\udc00": 1}}), r"payload contains a lone surrogate \(U\+DC00\)"),
        (NewMessage("a.\ud800", {}), r"type 'a.\\ud800' contains a lone surrogate"),
        (NewMessage("a.b", {}, key="room-\udfff"), "key 'room-.*' contains a lone surrogate"),
        (NewMessage("a.b", {}, dedupe_key="\ud83d"), "dedupe_key .* contains a lone surrogate"),
        (NewMessage("a.b", Text(s="\ud800")), "payload is not JSON-serialisable: .*surrogates"),
        (
            NewMessage("a.b", {}, dedupe_key="k" * 3000),
            "dedupe_key is 3000 bytes in UTF-8, over the limit of 2000 bytes",
        ),
        (  # 700 characters, 2,100 bytes: the bound is in bytes, as the index's is
            NewMessage("a.b", {}, dedupe_key="€" * 700),
            "dedupe_key is 2100 bytes in UTF-8, over the limit of 2000 bytes",
        ),
        (NewMessage("a.b", {}, key="k" * 2001), "key is 2001 bytes in UTF-8, over the limit"),
        (NewMessage("a.b", nested(5000)), "payload is nested deeper than 512 levels"),
        (NewMessage("a.b", nested(513)), "payload is nested deeper than 512 levels"),
        (NewMessage("a.b", {"n": [10**4300]}), "payload holds an integer of more than 4300 digits"),
        (
            NewMessage("a.b", Big(n=-(10**4300))),
            "payload holds an integer of more than 4300 digits",
        ),
        (
            NewMessage("a.b", {"x": float("-inf")}),
            r"payload is not JSON-serialisable: it holds -inf \(JSON has no NaN",
        ),
        (
            NewMessage("a.b", Loose(x=float("nan"))),
            r"payload is not JSON-serialisable: it holds NaN \(JSON has no",
        ),
    ],
)
async def test_refusals_leave_the_callers_transaction_usable(
    engine: AsyncEngine, message: NewMessage, error: str
) -> None:
    """Refused before anything reaches the database: the same transaction commits after."""
    async with engine.begin() as conn:
        with pytest.raises(InvalidMessageError, match=error):
            await enqueue(
                conn, message.type, message.payload, key=message.key, dedupe_key=message.dedupe_key
            )
        with pytest.raises(InvalidMessageError, match=rf"messages\[1\]: {error}"):
            await enqueue_many(conn, [NewMessage("ok.first", {}), message])
        kept = await enqueue(conn, "ok.after", {"n": 1})
    assert await all_rows(engine) == [(kept, "ok.after", {"n": 1})]


async def test_refusal_leaves_a_sync_session_usable(
    engine: AsyncEngine, sync_engine: Engine
) -> None:
    with Session(sync_engine) as session, session.begin():
        with pytest.raises(InvalidMessageError, match="contains a lone surrogate"):
            enqueue(session, "a.b", {"text": "\udc80"})
        kept = enqueue(session, "ok.after", {})
    assert await all_rows(engine) == [(kept, "ok.after", {})]


async def test_values_at_the_bounds_are_stored_and_read_back(engine: AsyncEngine) -> None:
    dedupe_key = secrets.token_urlsafe(1500)[:2000]  # incompressible: the index's worst case
    key = "é" * 1000  # 2,000 bytes
    payload = {"deep": nested(511), "n": 10**4299, "s": "😀"}  # 512 levels in all
    async with engine.begin() as conn:
        id_ = await enqueue(conn, "a.b", payload, key=key, dedupe_key=dedupe_key)
    [message] = await claim_batch(engine, limit=10, lock_seconds=30, worker_id="w")
    assert (message.id, message.key, message.payload) == (id_, key, payload)
