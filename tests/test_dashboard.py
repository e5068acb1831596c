"""The library calls behind the dashboard (and the CLI), its security rules, its selectors.

Real PostgreSQL. Browser tests: ``tests/test_dashboard_browser.py``; plans:
``tests/test_dashboard_plans.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.dashboard.forms import FormError, chosen_ids, filter_fields, filter_of
from outbox.dashboard.security import SESSION_SECONDS, Guard, load_token, same_origin
from outbox.storage.admin import (
    DeadFilter,
    count_dead,
    find_message,
    list_dead,
    purge_dead,
    retry_dead,
)
from outbox.storage.audit import Audit, recent_audit
from tests.conftest import query

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


async def dead_rows(engine: AsyncEngine) -> dict[str, int]:
    """Five dead rows; their ids by name."""
    rows = {
        "percent": ("message.created", "room-1", "quota 100% used"),
        "like": ("message.created", "room-1", "quota 100x used"),
        "other_key": ("message.created", "room-2", "quota 100% used"),
        "doc": ("document.preprocess.v1", "room-1", "Sidecar said 422"),
        "no_error": ("message.created", "room-1", None),
    }
    ids = {}
    async with engine.begin() as conn:
        for name, (type_, key, error) in rows.items():
            result = await conn.execute(
                text(
                    "INSERT INTO outbox (type, key, payload, status, error, dedupe_key)"
                    " VALUES (:t, :k, '{\"n\": 1}', 'dead', :e, :d) RETURNING id"
                ),
                {"t": type_, "k": key, "e": error, "d": f"dk-{name}"},
            )
            ids[name] = result.scalar_one()
    return ids


async def test_key_and_error_text_select_literally_and_changes_are_audited(
    engine: AsyncEngine,
) -> None:
    ids = await dead_rows(engine)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox_audit"))
    selection = DeadFilter(key="room-1", error_contains="100%", type_prefix="message.")
    assert [m.id for m in await list_dead(engine, selection)] == [ids["percent"]]
    assert await count_dead(engine, DeadFilter(error_contains="QUOTA")) == 3  # any case
    assert await count_dead(engine, DeadFilter(key="room-1")) == 4

    audit = Audit(actor="test:alice@here")
    result = await retry_dead(engine, selection, audit=audit, batch_size=1)
    assert result.retried == 1
    purged = await purge_dead(engine, DeadFilter(error_contains="422"), audit=audit, dry_run=True)
    assert purged == 1
    assert await purge_dead(engine, DeadFilter(ids=(ids["doc"], ids["like"])), audit=audit) == 2
    records = await recent_audit(engine)
    assert [(r.action, r.rows_affected, r.actor) for r in records] == [
        ("purge", 2, "test:alice@here"),
        ("retry", 1, "test:alice@here"),
    ]
    assert records[1].selection == {
        "key": "room-1",
        "error_contains": "100%",
        "type_prefix": "message.",
    }
    assert {r.operation for r in records} == {audit.operation}
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, status, key FROM outbox"))
        left = {id_: (status, key) for id_, status, key in rows.all()}
    assert left == {  # keys untouched
        ids["percent"]: ("pending", "room-1"),
        ids["other_key"]: ("dead", "room-2"),
        ids["no_error"]: ("dead", "room-1"),
    }
    # Nothing selected, nothing changed: no audit row.
    assert (await retry_dead(engine, DeadFilter(key="nobody"), audit=audit)).retried == 0
    assert len(await recent_audit(engine)) == 2


async def test_find_a_message_by_id_or_dedupe_key(engine: AsyncEngine) -> None:
    ids = await dead_rows(engine)
    found = await find_message(engine, dedupe_key="dk-doc")
    assert found is not None and found.id == ids["doc"] and found.payload == {"n": 1}
    assert found.error == "Sidecar said 422" and found.status == "dead"
    assert (await find_message(engine, id=ids["doc"])) == found
    assert await find_message(engine, id=10**12) is None
    assert await find_message(engine, dedupe_key="nope") is None


def test_sessions_and_csrf() -> None:
    guard = Guard("a-long-enough-token-123")
    cookie = guard.new_session("Ann <admin>", now=1000)
    session = guard.session(cookie, now=1001)
    assert session is not None and session.name == "Ann <admin>"
    assert guard.may_change(session, session.csrf) is None
    assert guard.may_change(session, None) is not None
    assert guard.may_change(session, "0" * 64) is not None
    assert guard.may_change(None, session.csrf) is not None
    assert guard.session(cookie, now=1000 + SESSION_SECONDS + 1) is None  # expired
    forged = cookie[:-1] + ("1" if cookie.endswith("0") else "0")
    assert guard.session(forged, now=1001) is None  # forged
    assert Guard("another-long-token-4567").session(cookie, now=1001) is None  # new token
    assert not guard.token_matches("a-long-enough-token-12")
    read_only = Guard("a-long-enough-token-123", read_only=True)
    assert read_only.may_change(read_only.session(cookie, now=1001), session.csrf) is not None
    assert Guard(None).read_only and Guard(None).may_change(None, None) is not None
    with pytest.raises(ValueError, match="needs a token"):
        Guard(None, require_token_for_viewing=True)
    with pytest.raises(ValueError, match="16 characters"):
        load_token("short", None)
    assert same_origin(None, "h:1", "http") and same_origin("http://h:1", "h:1", "http")
    assert not same_origin("http://evil", "h:1", "http") and not same_origin("null", "h", "http")


def test_form_fields() -> None:
    selection = filter_of({"type_prefix": ["doc."], "error": ["50%"], "older_than": ["2h"]})
    assert selection.error_contains == "50%" and selection.older_than is not None
    assert filter_of({name: [value] for name, value in filter_fields(selection)}) == selection
    assert chosen_ids({"id": ["3", "1", "3"]}) == (3, 1)
    for bad in ({"id": ["x"]}, {"older_than": ["soon"]}):
        with pytest.raises(FormError):
            filter_of(bad) if "older_than" in bad else chosen_ids(bad)


def test_cli_lists_and_purges_dead_rows_by_key_and_error_text(database_url: str) -> None:
    query(database_url, "TRUNCATE outbox, outbox_audit")
    query(
        database_url,
        "INSERT INTO outbox (type, key, payload, status, error) VALUES"
        " ('a.x', 'k1', '{}', 'dead', 'Timeout_1'), ('a.x', 'k1', '{}', 'dead', 'TimeoutX1'),"
        " ('a.x', 'k2', '{}', 'dead', 'Timeout_1')",
    )
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}

    def outbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outbox.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = outbox("dead", "purge")
    assert refused.returncode == 2 and "name the dead messages to purge" in refused.stderr
    listed = outbox("dead", "list", "--key", "k1", "--error-contains", "timeout_", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [m["error"] for m in json.loads(listed.stdout)] == ["Timeout_1"]
    purged = outbox("dead", "purge", "--key", "k1", "--json")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"purged": 2, "dry_run": False}
    ((actor, action, rows),) = query(
        database_url, "SELECT actor, action, rows_affected FROM outbox_audit"
    )
    assert str(actor).startswith("cli:") and (action, rows) == ("purge", 2)
