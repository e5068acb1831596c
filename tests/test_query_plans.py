"""The hot queries stay index scans on a large table (EXPLAIN ANALYZE, kept as a test).

Checked under both custom plans (planned with the parameter values) and generic plans (what
a prepared statement may switch to after a few executions, planned with the values unknown:
PREPARE, then EXPLAIN EXECUTE under ``plan_cache_mode = force_generic_plan``). Statements
run for real inside transactions that are rolled back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from outbox import async_database_url, claim_batch
from outbox.storage import key_order
from outbox.storage.claims import claim_statement, reap_statement

pytestmark = pytest.mark.anyio

CLAIM_INDEXES = {"ix_outbox_claimable", "ix_outbox_claimable_type"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def big_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_database_url(database_url))
    yield engine
    await engine.dispose()


async def fill(conn: AsyncConnection, **counts: int) -> None:
    """Bulk rows, in the order given, each group an hour younger than the one before.

    Names: ``published_chat``, ``pending_chat``, ``pending_docs``, ``leased``. The first
    group is the oldest, so a claim that walked it in age order would read all of it.
    """
    await conn.exec_driver_sql("TRUNCATE outbox")
    spec = {
        "published_chat": ("message.created", "published"),
        "pending_chat": ("message.created", "pending"),
        "pending_docs": ("document.preprocess.v1", "pending"),
        "leased": ("message.created", "in_progress"),
    }
    for age, (name, count) in enumerate(reversed(counts.items())):
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, published_at, next_attempt_at,"
            " locked_until, locked_by)"
            " SELECT $1, '{}', $2::text,"
            " CASE WHEN $2::text = 'published' THEN now() END,"
            " now() - make_interval(hours => $3::int),"
            " CASE WHEN $2::text = 'in_progress' THEN now() + interval '1 minute' END,"
            " CASE WHEN $2::text = 'in_progress' THEN 'w' END"
            " FROM generate_series(1, $4::int)",
            (*spec[name], age, count),
        )
    await conn.exec_driver_sql("ANALYZE outbox")


Statement = tuple[Executable, Mapping[str, object]]


async def plan(conn: AsyncConnection, statement: Statement, generic: bool) -> dict[str, Any]:
    """The executed statement's plan (roll the transaction back after)."""
    executable, values = statement
    compiled = executable.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
    bound = compiled.construct_params(dict(values))
    params = tuple(bound[name] for name in compiled.positiontup or ())
    explain = "EXPLAIN (ANALYZE, FORMAT JSON)"
    if generic:
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE checked AS {compiled.string}")
        # EXPLAIN EXECUTE takes no bind parameters: the values go in as literals.
        arguments = ", ".join(sql_literal(value) for value in params)
        result = await conn.exec_driver_sql(f"{explain} EXECUTE checked({arguments})")
        await conn.exec_driver_sql("DEALLOCATE checked")  # prepared statements outlive rollback
    else:
        result = await conn.exec_driver_sql(f"{explain} {compiled.string}", params)
    raw = result.scalar_one()
    document = json.loads(raw) if isinstance(raw, str) else raw
    return dict(document[0]["Plan"])


def sql_literal(value: object) -> str:
    """A test-only SQL literal for the few parameter types the statements use."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, timedelta):
        return f"interval '{value.total_seconds()} seconds'"
    if isinstance(value, datetime):
        return f"timestamptz '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):  # an array literal; PREPARE's casts give it its type
        items = ",".join(
            '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value
        )
        return sql_literal("{" + items + "}")
    raise TypeError(f"no literal for {value!r}")


def scans(node: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every (node type, index name) in the plan tree that reads the outbox table."""
    found = []
    if node.get("Relation Name") == "outbox" or "Index Name" in node:
        found.append((node["Node Type"], node.get("Index Name")))
    for child in node.get("Plans", []):
        found += scans(child)
    return found


def rows_read(node: dict[str, Any]) -> int:
    """Index entries and rows the scans of the outbox table produced or filtered away.

    EXPLAIN reports rows per loop, so each scan's figures are multiplied by its loops.
    """
    total = 0
    if node.get("Relation Name") == "outbox" or "Index Name" in node:
        per_loop = int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
        total += per_loop * int(node.get("Actual Loops", 1))
    return total + sum(rows_read(child) for child in node.get("Plans", []))


def work(node: dict[str, Any]) -> int:
    """Rows every node of the plan produced or discarded (filters, join filters), x loops."""
    per_loop = sum(
        int(node.get(key, 0))
        for key in ("Actual Rows", "Rows Removed by Filter", "Rows Removed by Join Filter")
    )
    own = per_loop * int(node.get("Actual Loops", 1))
    return own + sum(work(child) for child in node.get("Plans", []))


def claimed_rows(executed: dict[str, Any]) -> int:
    """The rows a claim's plan leased: its output less the frontier's own row."""
    return int(executed["Actual Rows"]) - 1


def claim(**filters: Any) -> Statement:
    return claim_statement(limit=100, lock_seconds=30, worker_id="w", **filters)


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
async def test_claims_and_reap_use_indexes_beside_a_large_published_history(
    big_engine: AsyncEngine, generic: bool
) -> None:
    async with big_engine.begin() as conn:
        await fill(conn, published_chat=200_000, pending_docs=1_000, leased=50)
    for statement, index in (
        (claim(), "ix_outbox_claimable"),
        (claim(include_type_prefix="document."), "ix_outbox_claimable_type"),
        (claim(exclude_type_prefix="document."), "ix_outbox_claimable_type"),
        (reap_statement(now=datetime.now(UTC) + timedelta(hours=1)), "ix_outbox_lease"),
    ):
        async with big_engine.connect() as conn:
            executed = await plan(conn, statement, generic)
            await conn.rollback()
        read = scans(executed)
        assert ("Seq Scan", None) not in read, read
        assert index in {name for _, name in read}, read
        assert rows_read(executed) <= 2_000, executed


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize(
    ("backlog", "claimer"),
    [
        ({"pending_chat": 200_000, "pending_docs": 1_000}, {"include_type_prefix": "document."}),
        ({"pending_docs": 200_000, "pending_chat": 1_000}, {"exclude_type_prefix": "document."}),
    ],
    ids=["documents-behind-chat", "chat-behind-documents"],
)
async def test_one_domains_claim_does_not_walk_another_domains_backlog(
    big_engine: AsyncEngine, generic: bool, backlog: dict[str, int], claimer: dict[str, str]
) -> None:
    """The other domain's 200,000 older pending rows are never read by this claim."""
    async with big_engine.begin() as conn:
        await fill(conn, **backlog)
    async with big_engine.connect() as conn:
        executed = await plan(conn, claim(**claimer), generic)
        await conn.rollback()
    read = scans(executed)
    assert ("Seq Scan", None) not in read, read
    assert "ix_outbox_claimable_type" in {index for _, index in read}, read
    assert rows_read(executed) <= 1_100, executed


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("ack", ["published", "reschedule", "dead", "extend", "release"])
async def test_acknowledgements_probe_only_their_own_rows(
    big_engine: AsyncEngine, generic: bool, ack: str
) -> None:
    """A 500-row ack reads each row at most once: its own 500, at worst every leased row.

    The join form this replaced read leased rows x batch (250,000 for 500 of 500) under a
    generic plan: a nested loop rescanning the unnest() for every leased row.
    """
    async with big_engine.begin() as conn:
        # Statistics taken while nothing was leased, as on a live table between ANALYZEs.
        await fill(conn, published_chat=50_000, pending_chat=2_500)
    async with big_engine.connect() as conn:
        await claim_batch(conn, limit=2_000, lock_seconds=30, worker_id="other")
        claimed = await claim_batch(conn, limit=500, lock_seconds=30, worker_id="w")
        assert len(claimed) == 500
        params: dict[str, object] = {
            "worker_id": "w",
            "now": None,
            "lease_ids": [m.id for m in claimed],
            "lease_tokens": [m.lease_token for m in claimed],
        }
        statement, extra = {
            "published": (key_order.MARK_PUBLISHED, {}),
            "reschedule": (
                key_order.RESCHEDULE,
                {"lease_error": ["e"] * 500, "lease_delay": [1.5] * 500, "max_attempts": 10},
            ),
            "dead": (key_order.MARK_DEAD, {"lease_error": ["e"] * 500}),
            "extend": (key_order.EXTEND_LEASE, {"lease": timedelta(seconds=60)}),
            "release": (key_order.RELEASE, {"hold": None}),
        }[ack]
        executed = await plan(conn, (statement, {**params, **extra}), generic)
        await conn.rollback()
    read = scans(executed)
    changed = executed if executed["Node Type"] == "Update" else executed["Plans"][0]
    assert changed["Actual Rows"] == 500, read
    assert ("Seq Scan", None) not in read, read
    # At most: every leased row's index entry once (2,500) plus the 500 rows updated, not
    # leased rows x batch.
    assert work(executed) <= 2 * (2_500 + 500), (work(executed), read)


async def test_a_claim_reads_about_its_batch_from_its_own_large_backlog(
    big_engine: AsyncEngine,
) -> None:
    """200,000 pending rows of the claimer's own type: it reads its pool, not the backlog."""
    async with big_engine.begin() as conn:
        await fill(conn, pending_chat=200_000)
    for claimer in ({}, {"exclude_type_prefix": "document."}, {"include_type_prefix": "message."}):
        for generic in (False, True):
            async with big_engine.connect() as conn:
                executed = await plan(conn, claim(**claimer), generic)
                await conn.rollback()
            read = scans(executed)
            assert ("Seq Scan", None) not in read, (claimer, generic, read)
            # Every plan node's output (x loops) for a 100-row claim: a filtered claim walks
            # 300 rows (3 x limit) and keeps a 200-row pool (read again for the frontier), a
            # few thousand rows in all, where reading the backlog would be 200,000.
            assert work(executed) <= 5_000, (claimer, generic, work(executed), read)


async def fill_types(conn: AsyncConnection, rows: int, types: int) -> None:
    """``rows`` pending rows over ``types`` distinct types (``app<n>.changed``), mixed ages."""
    await conn.exec_driver_sql("TRUNCATE outbox")
    await conn.exec_driver_sql(
        "INSERT INTO outbox (type, payload, next_attempt_at)"
        " SELECT 'app' || (g % $1::int) || '.changed', '{}',"
        " now() - random() * interval '1 hour' FROM generate_series(1, $2::int) g",
        (types, rows),
    )
    await conn.exec_driver_sql("ANALYZE outbox")


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("types", [10, 1_000, 5_000])
async def test_a_filtered_claim_does_not_grow_with_the_number_of_types(
    big_engine: AsyncEngine, generic: bool, types: int
) -> None:
    """Exclude ``document.`` over thousands of pending types: it reads the walk, not a probe
    per type (the per-type merge took 40 ms a claim over 5,000 types)."""
    async with big_engine.begin() as conn:
        await fill_types(conn, 20_000, types)
    for claimer in ({"exclude_type_prefix": "document."}, {"include_type_prefix": "app"}):
        async with big_engine.connect() as conn:
            executed = await plan(conn, claim(**claimer), generic)
            await conn.rollback()
        assert claimed_rows(executed) == 100, claimer
        assert ("Seq Scan", None) not in scans(executed), claimer
        # The walk (300 index entries), the pool's primary-key probes (200), the update (100).
        assert rows_read(executed) <= 700, (claimer, rows_read(executed), scans(executed))


async def test_a_cached_generic_plan_stays_bounded_when_another_domain_floods_in(
    big_engine: AsyncEngine,
) -> None:
    """Plans made while the table held 1,000 chat rows, then 100,000 older document rows
    committed and no ANALYZE: the chat claim still reads about its batch."""
    async with big_engine.begin() as conn:
        await fill(conn, pending_chat=1_000)
    statement, values = claim(exclude_type_prefix="document.")
    compiled = statement.compile(dialect=big_engine.dialect)
    bound = compiled.construct_params(dict(values))
    arguments = ", ".join(sql_literal(bound[name]) for name in compiled.positiontup or ())
    async with big_engine.connect() as conn:
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE cached AS {compiled.string}")
        await conn.exec_driver_sql(f"EXECUTE cached({arguments})")  # planned on 1,000 rows
        await conn.rollback()
        async with big_engine.begin() as other:
            await other.exec_driver_sql(
                "INSERT INTO outbox (type, payload, next_attempt_at)"
                " SELECT 'document.preprocess.v1', '{}', now() - interval '2 hours'"
                " FROM generate_series(1, 100000)"
            )
        result = await conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE cached({arguments})"
        )
        raw = result.scalar_one()
        await conn.rollback()
        await conn.exec_driver_sql("DEALLOCATE cached")
    executed = dict((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    assert claimed_rows(executed) == 100
    assert ("Seq Scan", None) not in scans(executed)
    # The walk meets only documents, so the per-type merge runs: the walk (300), one probe
    # per chat type, the chat pool (200) and its primary-key probes, never the 100,000.
    assert rows_read(executed) <= 1_100, (rows_read(executed), scans(executed))


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("keys", ["one-key", "a-key-per-row"])
async def test_the_ordered_claim_reads_about_its_batch_whatever_the_keys(
    big_engine: AsyncEngine, generic: bool, keys: str
) -> None:
    """100,000 pending rows in one key, or each in a key of its own: a 100-row ordered claim
    reads its walk (3 x limit) and its keys' heads, never a key's backlog or every key."""
    one_key = keys == "one-key"
    async with big_engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE outbox, outbox_keys, outbox_key_leases")
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, key, payload) SELECT 'message.created',"
            " CASE WHEN $1 THEN 'hot' ELSE 'k' || g END, '{}'"
            " FROM generate_series(1, 100000) g",
            (one_key,),
        )
        await conn.exec_driver_sql("ANALYZE outbox")
    for claimer in ({}, {"exclude_type_prefix": "document."}):
        async with big_engine.connect() as conn:
            executed = await plan(conn, claim(ordered=True, **claimer), generic)
            await conn.rollback()
        read = scans(executed)
        assert ("Seq Scan", None) not in read, (claimer, read)
        assert "ix_outbox_key_order" in {index for _, index in read}, read
        assert claimed_rows(executed) == 100  # a full batch
        # About 3,000-7,500 (the walk, the keys' heads, the locks, the leases, the update),
        # where reading a key's backlog or every key would be 100,000 or more.
        assert work(executed) <= 10_000, (claimer, generic, work(executed), read)


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
async def test_the_ordered_claim_behind_a_leased_keys_backlog_scans_a_bounded_number_of_keys(
    big_engine: AsyncEngine, generic: bool
) -> None:
    """50,000 older rows of one leased key, then 50,000 keys of one row: the walk meets only
    the leased key, and the rescue scan probes at most 3 x limit keys."""
    async with big_engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE outbox, outbox_keys, outbox_key_leases")
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, key, payload, next_attempt_at)"
            " SELECT 'message.created', CASE WHEN g <= 50000 THEN 'busy' ELSE 'k' || g END, '{}',"
            " now() - interval '1 hour' + g * interval '1 ms'"
            " FROM generate_series(1, 100000) g"
        )
        await conn.exec_driver_sql("ANALYZE outbox")
    async with big_engine.connect() as conn:
        busy = await claim_batch(conn, limit=100, lock_seconds=30, worker_id="w", ordered=True)
        assert {m.key for m in busy} == {"busy"}
        executed = await plan(conn, claim(ordered=True), generic)
        await conn.rollback()
    assert claimed_rows(executed) == 100
    read = scans(executed)
    assert ("Seq Scan", None) not in read, read
    assert work(executed) <= 15_000, (generic, work(executed), read)
