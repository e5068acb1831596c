"""Alembic: upgrade/downgrade round trip, no drift from the metadata, standalone CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from outbox import async_database_url, metadata
from outbox.primitives.urls import libpq_dsn
from outbox.storage.migrate import VERSION_TABLE, alembic_config, downgrade, upgrade
from tests.conftest import query
from workers.document_schema import documents_metadata

REPO = Path(__file__).resolve().parent.parent
OUTBOX_TABLES = {"outbox", "outbox_audit", "outbox_keys", "outbox_key_leases", VERSION_TABLE}


def names(url: str, sql: str) -> set[str]:
    return {str(row[0]) for row in query(url, sql)}


def tables(url: str) -> set[str]:
    return names(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")


def indexes(url: str) -> set[str]:
    return names(url, "SELECT indexname FROM pg_indexes WHERE tablename = 'outbox'")


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    upgrade(empty_database)
    assert tables(empty_database) == OUTBOX_TABLES
    assert indexes(empty_database) == {
        "outbox_pkey",
        "ix_outbox_claimable",
        "ix_outbox_claimable_type",
        "ix_outbox_lease",
        "ix_outbox_published_at",
        "ix_outbox_dead_at",
        "uq_outbox_dedupe_key",
        "ix_outbox_key_order",
    }
    downgrade(empty_database)
    assert tables(empty_database) == {VERSION_TABLE}
    upgrade(empty_database)
    assert tables(empty_database) == OUTBOX_TABLES


def test_upgrading_to_dead_at_stamps_the_dead_rows_already_there(empty_database: str) -> None:
    upgrade(empty_database, "outbox_0002")
    query(
        empty_database,
        "INSERT INTO outbox (type, payload, status, created_at, next_attempt_at) VALUES"
        " ('a.x', '{}', 'dead', '2026-01-01Z', '2026-01-02Z'),"
        " ('b.x', '{}', 'pending', '2026-01-04Z', '2026-01-04Z')",
    )
    before = datetime.now(UTC)
    upgrade(empty_database)
    after = datetime.now(UTC)
    # When it really died is unknown: its retention counts from the upgrade.
    (dead, dead_at), pending = query(empty_database, "SELECT type, dead_at FROM outbox ORDER BY id")
    assert dead == "a.x" and isinstance(dead_at, datetime) and before <= dead_at <= after
    assert pending == ("b.x", None)
    downgrade(empty_database, "outbox_0002")
    assert "ix_outbox_dead_created_at" in indexes(empty_database)
    columns = names(
        empty_database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'",
    )
    assert "dead_at" not in columns


def test_migrations_run_inside_a_transaction_the_caller_began(empty_database: str) -> None:
    """Alembic's cookbook: hand it a connection inside ``engine.begin()``. It cannot commit
    that transaction, so outbox_0003 builds its index inside it; a rollback undoes all."""
    engine = create_engine(sync_url(empty_database))
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            config = alembic_config(empty_database)
            config.attributes["connection"] = conn
            command.upgrade(config, "outbox@head")
            transaction.rollback()
        assert tables(empty_database) == set()
        with engine.begin() as conn:
            config = alembic_config(empty_database)
            config.attributes["connection"] = conn
            command.upgrade(config, "outbox@head")
    finally:
        engine.dispose()
    assert "ix_outbox_dead_at" in indexes(empty_database)
    assert names(empty_database, "SELECT version_num FROM outbox_alembic_version") == {
        "outbox_0007"
    }


def sync_url(database_url: str) -> str:
    return (
        async_database_url(database_url)
        .set(drivername="postgresql+psycopg")
        .render_as_string(hide_password=False)
    )


def test_what_autogenerate_cannot_see_matches_the_metadata(empty_database: str) -> None:
    """Partial-index predicates and the type column's collation, which Alembic ignores."""
    upgrade(empty_database)
    definitions = names(
        empty_database,
        "SELECT regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes"
        " WHERE tablename = 'outbox'",
    )
    assert definitions == {
        "btree (id)",
        "btree (next_attempt_at, id) WHERE (status = 'pending'::text)",
        "btree (type, next_attempt_at, id) WHERE (status = 'pending'::text)",
        "btree (locked_until) WHERE (status = 'in_progress'::text)",
        "btree (published_at) WHERE (status = 'published'::text)",
        "btree (dead_at, id) WHERE (status = 'dead'::text)",
        "btree (dedupe_key) WHERE (dedupe_key IS NOT NULL)",
        "btree (key, seq, id) WHERE ((status = ANY (ARRAY['pending'::text, 'in_progress'::text]))"
        " AND (key IS NOT NULL))",
    }
    collations = names(
        empty_database,
        "SELECT column_name || ':' || coalesce(collation_name, '-')"
        " FROM information_schema.columns WHERE table_name = 'outbox' AND data_type = 'text'",
    )
    assert collations == {
        "type:C",
        "key:-",
        "status:-",
        "locked_by:-",
        "error:-",
        "dedupe_key:-",
    }
    triggers = names(
        empty_database,
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'outbox'::regclass AND NOT tgisinternal",
    )
    assert triggers == {
        "outbox_notify_on_insert",
        "outbox_dead_at_on_insert",
        "outbox_dead_at_on_update",
        "outbox_forget_position_on_retry",
        "outbox_release_held_key_on_retry",
        "outbox_release_held_key_on_purge",
    }


@pytest.mark.parametrize("documents", [False, True], ids=["outbox", "with-documents"])
def test_autogenerate_finds_no_difference(empty_database: str, documents: bool) -> None:
    upgrade(empty_database, documents=documents)
    target = MetaData()
    for source in [metadata, documents_metadata] if documents else [metadata]:
        for table in source.tables.values():
            table.to_metadata(target)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "compare_server_default": True},
        )
        return list(compare_metadata(context, target))

    async def compare() -> list[object]:
        engine = create_async_engine(async_database_url(empty_database))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(diff)
        finally:
            await engine.dispose()

    differences = asyncio.run(compare())
    # The version table is Alembic's own; anything else is drift.
    assert [d for d in differences if VERSION_TABLE not in repr(d)] == []


def test_standalone_alembic_cli_uses_plain_database_url(empty_database: str) -> None:
    plain = libpq_dsn(empty_database)
    assert plain.startswith("postgresql://")
    env = {**os.environ, "DATABASE_URL": plain}
    alembic = [sys.executable, "-m", "alembic"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*alembic, *args], cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    run("upgrade", "outbox@head")
    assert tables(empty_database) == OUTBOX_TABLES
    run("upgrade", "heads")
    assert tables(empty_database) == {
        "outbox",
        "outbox_audit",
        "outbox_keys",
        "outbox_key_leases",
        "documents",
        "document_chunks",
        VERSION_TABLE,
    }
    current = run("current").stdout
    assert "outbox_0007 (head)" in current and "documents_0004 (head)" in current
    run("downgrade", "documents@base")
    assert tables(empty_database) == OUTBOX_TABLES


def test_the_documents_branch_runs_only_when_asked_for(empty_database: str) -> None:
    upgrade(empty_database)
    assert tables(empty_database) == OUTBOX_TABLES
    upgrade(empty_database, documents=True)
    assert tables(empty_database) == {
        "outbox",
        "outbox_audit",
        "outbox_keys",
        "outbox_key_leases",
        "documents",
        "document_chunks",
        VERSION_TABLE,
    }
    upgrade(empty_database)  # a deploy step that migrates the outbox still works
    downgrade(empty_database, "documents@base")
    assert tables(empty_database) == OUTBOX_TABLES
    upgrade(empty_database, documents=True)
    downgrade(empty_database)
    assert tables(empty_database) == {VERSION_TABLE}


def test_standalone_alembic_cli_without_database_url_names_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "heads"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "DATABASE_URL is not set" in done.stderr


# A host application's own Alembic (docs/table-and-migrations.md): tests/test_host_alembic.py.
