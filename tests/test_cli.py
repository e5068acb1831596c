"""The ``outbox`` CLI as a real subprocess against a real PostgreSQL: exit codes, outputs,
and exactly which rows each command changes.

Independent read-only invocations run concurrently (each one pays the interpreter's and
SQLAlchemy's start-up), so the module stays fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from devservers import free_port
from outbox.cli.exits import IN_FLIGHT
from outbox.cli.render import messages
from outbox.primitives.durations import format_duration, parse_duration
from outbox.primitives.prefixes import type_ranges
from outbox.primitives.urls import libpq_dsn
from outbox.storage import statements as sql
from tests.conftest import query
from tests.test_query_plans import plan, rows_read, scans

ROOT = Path(__file__).resolve().parent.parent
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def start(args: Sequence[str], url: str | None) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", "")}
    if url is not None:
        env["DATABASE_URL"] = url
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_many(url: str | None, *commands: Sequence[str]) -> list[Ran]:
    """Run the commands concurrently (``DATABASE_URL=url``); results in the same order."""
    processes = [start(args, url) for args in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        results.append(Ran(process.returncode, out, err))
    return results


def cli(url: str | None, *args: str) -> Ran:
    return cli_many(url, args)[0]


# -- rows ----------------------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the module's database, the outbox table emptied first."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        conn.execute("TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY")
        yield conn


def add(
    db: psycopg.Connection[Any],
    type_: str,
    status: str,
    *,
    age: timedelta = timedelta(0),
    published_age: timedelta | None = None,
    dead_age: timedelta | None = None,
    attempts: int = 1,
    error: str | None = None,
) -> int:
    """Insert a row created ``age`` ago and due since then (a dead one also dead since
    then, unless ``dead_age`` says otherwise); return its id."""
    if status == "dead" and dead_age is None:
        dead_age = age
    row = db.execute(
        "INSERT INTO outbox (type, payload, status, attempts, error, created_at,"
        " next_attempt_at, published_at, dead_at)"
        " VALUES (%s, '{}', %s, %s, %s, now() - %s, now() - %s, now() - %s::interval,"
        "         now() - %s::interval)"
        " RETURNING id",
        (type_, status, attempts, error, age, age, published_age, dead_age),
    ).fetchone()
    assert row is not None
    return int(row[0])


def table_rows(db: psycopg.Connection[Any]) -> dict[int, tuple[str, int]]:
    """``{id: (status, attempts)}`` of every row."""
    return {i: (s, a) for i, s, a in db.execute("SELECT id, status, attempts FROM outbox")}


# -- usage, settings, reachability ---------------------------------------------------------


def test_help_documents_the_exit_codes_and_a_missing_url_exits_2() -> None:
    helped, no_url = cli_many(None, ["--help"], ["stats"])
    assert helped.code == 0, helped
    assert "exit codes:" in helped.out
    for line in ("0    success", "3    PostgreSQL unreachable", "4    PostgreSQL reachable"):
        assert line in helped.out
    for command in ("migrate", "stats", "dead", "purge", "top"):
        assert command in helped.out
    assert no_url == Ran(
        2, "", "outbox: no database: set DATABASE_URL or pass --database-url URL\n"
    )


def test_usage_errors_exit_2_and_name_the_argument(database_url: str) -> None:
    garbage, negative, no_selector, all_and_more = cli_many(
        database_url,
        ["dead", "list", "--older-than", "3 fortnights"],
        ["purge", "published", "--older-than=-5m"],
        ["dead", "retry"],
        ["dead", "retry", "--all", "--type-prefix", "chat."],
    )
    for ran in (garbage, negative):
        assert ran.code == 2, ran
        assert "error: argument --older-than: " in ran.err, ran
        assert "is not a duration: use e.g. 90s, 15m, 2h, 7d, 1w, 1h30m" in ran.err
    assert no_selector.code == 2
    assert "outbox dead retry: error: name the dead messages to retry" in no_selector.err
    assert "--all" in no_selector.err
    assert all_and_more.code == 2
    assert "--all retries every dead message: give it without selectors" in all_and_more.err


def test_an_unreachable_database_exits_3_without_showing_the_password() -> None:
    port = free_port()
    url = f"postgresql://root:sekret@127.0.0.1:{port}/postgres?password=sekret"
    for ran in cli_many(url, ["stats"], ["migrate"], ["top", "--iterations", "1"]):
        assert ran.code == 3, ran
        assert ran.out == ""
        shown = f"postgresql://root:***@127.0.0.1:{port}/postgres?password=***"
        assert ran.err.startswith(f"outbox: cannot reach PostgreSQL at {shown}: "), ran.err
        assert "sekret" not in ran.err


def test_bad_urls_exit_2_and_never_show_a_password(database_url: str) -> None:
    no_such_database = make_url(database_url).set(database="no_such_db_here", password="sekret")
    cases = {
        "postgresql://u:sekret@[::1/db": "outbox: DATABASE_URL: not a database URL:"
        " '(not shown: not a URL, and it may hold a password)'\n",
        "postgresql://u:sekret@h:99999/db": "outbox: DATABASE_URL: port 99999 is not a TCP port"
        " (1-65535)\n",
        "postgresql://u:sekret@h/db?sslmode=bogus": "outbox: DATABASE_URL: sslmode='bogus' is"
        " not one of allow, disable, prefer, require, verify-ca, verify-full\n",
        "host=db user=app password=sekret": "outbox: DATABASE_URL: not a database URL:"
        " '(not shown: not a URL, and it may hold a password)'\n",
    }
    for url, err in cases.items():
        assert cli(url, "stats") == Ran(2, "", err), url
    refused = cli(no_such_database.render_as_string(hide_password=False), "stats")
    assert refused.code == 2, refused
    assert refused.err.startswith("outbox: cannot use PostgreSQL at "), refused.err
    assert 'database "no_such_db_here" does not exist' in refused.err
    assert refused.err.endswith("(check DATABASE_URL / --database-url)\n")
    assert "sekret" not in refused.err


def test_no_outbox_table_exits_4_until_migrate_creates_it(empty_database: str) -> None:
    ran = cli(empty_database, "stats")
    assert ran.code == 4, ran
    assert ran.err.startswith("outbox: no outbox table in postgresql://")
    assert ran.err.endswith(": run `outbox migrate` first\n")

    assert cli(empty_database, "migrate") == Ran(0, "migrated: outbox_0007 (head)\n", "")
    assert cli(empty_database, "migrate", "--documents") == Ran(
        0, "migrated: documents_0004 (head), outbox_0007 (head)\n", ""
    )
    with psycopg.connect(libpq_dsn(empty_database)) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert tables == {
        "outbox",
        "outbox_audit",
        "outbox_keys",
        "outbox_key_leases",
        "outbox_alembic_version",
        "documents",
        "document_chunks",
    }


def test_a_non_utf8_type_prefix_is_a_usage_error(database_url: str) -> None:
    prefix = os.fsdecode(b"doc\xff.")  # the bytes as Python receives them (surrogateescape)
    for ran in cli_many(
        database_url,
        ["dead", "list", "--type-prefix", prefix],
        ["dead", "retry", "--type-prefix", prefix, "--dry-run"],
    ):
        assert ran.code == 2, ran
        assert "error: argument --type-prefix: b'doc\\xff.' is not UTF-8 text" in ran.err, ran


def test_sslmode_require_against_a_server_without_ssl_is_a_setting_not_an_outage(
    database_url: str,
) -> None:
    if query(database_url, "SHOW ssl") != [("off",)]:
        pytest.skip("this PostgreSQL serves SSL")
    url = make_url(database_url).update_query_dict({"sslmode": "require"})
    ran = cli(url.render_as_string(hide_password=False), "stats")
    assert ran.code == 2, ran
    assert ran.err.startswith("outbox: cannot use PostgreSQL at "), ran.err
    assert "the server does not support SSL, and the URL requires it (sslmode)" in ran.err
    assert "a settings problem, not an outage" in ran.err
    assert "cannot reach" not in ran.err


# -- stats ---------------------------------------------------------------------------------


def test_stats_counts_per_status_and_prefix(db: psycopg.Connection[Any], database_url: str) -> None:
    for _ in range(3):
        add(db, "message.created", "pending", age=timedelta(seconds=30))
    add(db, "message.created", "in_progress")
    add(db, "message.created", "published", published_age=timedelta(0))
    add(db, "document.preprocess.v1", "dead")
    add(db, "document.preprocess.v1", "pending", age=-HOUR)  # not claimable for an hour
    add(db, "plain", "published", published_age=timedelta(0))

    # The flag wins over DATABASE_URL (here a closed port).
    unreachable = f"postgresql://root@127.0.0.1:{free_port()}/postgres"
    as_json, as_text = cli_many(
        unreachable,
        ["stats", "--json", "--database-url", database_url],
        ["--database-url", database_url, "stats"],
    )

    assert as_json.code == 0, as_json
    report = json.loads(as_json.out)
    age = report.pop("oldest_claimable_age_seconds")
    assert 30 <= age < 60
    zero = {"pending": 0, "in_progress": 0, "published": 0, "dead": 0}
    assert report == {
        "by_status": {"pending": 4, "in_progress": 1, "published": 2, "dead": 1},
        "by_prefix": {
            "document.": {**zero, "pending": 1, "dead": 1},
            "message.": {**zero, "pending": 3, "in_progress": 1, "published": 1},
            "plain": {**zero, "published": 1},
        },
        "total": 8,
        "keys_in_flight": 0,
        "keys_held": 0,
    }
    assert as_text.code == 0, as_text
    *lines, oldest = as_text.out.splitlines()
    assert lines == [
        "prefix     pending  in_progress  published  dead  total",
        "document.        1            0          0     1      2",
        "message.         3            1          1     0      5",
        "plain            0            0          1     0      1",
        "total            4            1          2     1      8",
    ]
    assert re.fullmatch(r"oldest claimable: (3\d\.\d s|\d+ min \d+ s) ago", oldest), oldest


# -- dead list -----------------------------------------------------------------------------


def test_dead_list_is_latest_death_first_and_filters_literally(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    old = add(db, "a_b.sent", "dead", age=timedelta(days=3), error="first\nsecond")
    middle = add(
        db,
        "axb.sent",
        "dead",
        age=timedelta(days=30),  # created long before it died: its age is its dead_at
        dead_age=timedelta(hours=2),
        attempts=7,
        error="x" * 500,
    )
    recent = add(db, "a_b.sent", "dead", age=timedelta(minutes=5))
    twin = add(db, "chat.sent", "dead", age=timedelta(minutes=5))
    add(db, "a_b.sent", "pending")
    add(db, "a_b.sent", "published", published_age=timedelta(0))

    every, prefix, window, text = cli_many(
        database_url,
        ["dead", "list", "--json"],
        ["dead", "list", "--json", "--type-prefix", "a_b."],
        ["dead", "list", "--json", "--older-than", "1h", "--newer-than", "1d"],
        ["dead", "list", "--limit", "3"],
    )

    def ids(ran: Ran) -> list[int]:
        assert ran.code == 0, ran
        return [m["id"] for m in json.loads(ran.out)]

    assert ids(every) == [twin, recent, middle, old]
    assert ids(prefix) == [recent, old]  # "_" is literal: axb. is not a_b.
    assert ids(window) == [middle]
    first = json.loads(every.out)[2]
    assert first == {
        "id": middle,
        "type": "axb.sent",
        "key": None,
        "attempts": 7,
        "created_at": first["created_at"],
        "dead_at": first["dead_at"],
        "error": "x" * 500,
    }
    now = datetime.now(UTC)
    assert datetime.fromisoformat(first["created_at"]) < now - timedelta(days=29)
    died = now - datetime.fromisoformat(first["dead_at"])
    assert timedelta(hours=2) <= died < timedelta(hours=2, minutes=1)

    assert text.code == 0, text
    header, *lines = text.out.splitlines()
    assert header.split() == ["id", "type", "key", "attempts", "died", "error"]
    assert [int(line.split()[0]) for line in lines] == [twin, recent, middle]  # --limit 3
    assert lines[2].endswith("x" * 79 + "…")  # one line, cut


def test_human_output_shows_control_characters_escaped_and_json_exact(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    evil_type = "evil\x1b]0;pwned\x07.sent"
    evil_key = "room\x1b[2J\u202e"
    evil_error = "boom\x1b]0;owned\x07\x1b[2J\x9b31m end"
    id_ = add(db, evil_type, "dead", error=evil_error)
    db.execute("UPDATE outbox SET key = %s WHERE id = %s", (evil_key, id_))
    add(db, evil_type, "pending")

    text, as_json, stats, stats_json, top = cli_many(
        database_url,
        ["dead", "list"],
        ["dead", "list", "--json"],
        ["stats"],
        ["stats", "--json"],
        ["top", "--iterations", "1"],
    )
    for ran in (text, as_json, stats, stats_json, top):
        assert ran.code == 0, ran
    for ran in (text, stats, top):
        assert not any(c in ran.out for c in "\x1b\x07\x9b\u202e"), ran.out
    row = text.out.splitlines()[1]
    assert "evil\\x1b]0;pwned\\x07.sent" in row
    assert "room\\x1b[2J\\u202e" in row
    assert row.endswith("boom\\x1b]0;owned\\x07\\x1b[2J\\x9b31m end")
    assert "evil\\x1b]0;pwned\\x07." in stats.out.splitlines()[1]
    assert "| evil\\x1b]0;pwned\\x07. pending=1" in top.out
    [listed] = json.loads(as_json.out)
    assert (listed["type"], listed["key"], listed["error"]) == (evil_type, evil_key, evil_error)
    assert list(json.loads(stats_json.out)["by_prefix"]) == ["evil\x1b]0;pwned\x07."]


# -- dead retry ----------------------------------------------------------------------------


def test_dead_retry_by_ids_resets_exactly_those_and_reports_the_rest(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    a = add(db, "chat.sent", "dead", attempts=10, error="boom")
    b = add(db, "chat.sent", "dead", attempts=4)
    untouched = add(db, "chat.sent", "dead", attempts=10)
    published = add(db, "chat.sent", "published", published_age=timedelta(0))
    before = table_rows(db)

    ran = cli(database_url, "dead", "retry", str(a), str(b), str(published), "999", "--json")

    assert ran.code == 0, ran
    assert json.loads(ran.out) == {"retried": 2, "not_dead": [published, 999], "dry_run": False}
    assert ran.err == f"outbox: not dead, left alone: {published} (published), 999 (not found)\n"
    assert table_rows(db) == {**before, a: ("pending", 0), b: ("pending", 0)}
    row = db.execute(
        "SELECT error, next_attempt_at <= now(), locked_by, locked_until, lease_token"
        " FROM outbox WHERE id = %s",
        (a,),
    ).fetchone()
    assert row == ("boom", True, None, None, None)  # the last reason stays
    assert table_rows(db)[untouched] == ("dead", 10)


def test_dead_retry_by_literal_prefix_and_by_age(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    ours = [add(db, "a_b.sent", "dead", attempts=5) for _ in range(3)]
    lookalike = add(db, "axb.sent", "dead", attempts=5)
    old = add(db, "chat.sent", "dead", age=timedelta(days=2), attempts=5)
    young = add(db, "chat.sent", "dead", age=timedelta(hours=1), attempts=5)
    # Created two days ago, retried, and dead again an hour ago: young.
    reborn = add(db, "chat.sent", "dead", age=2 * timedelta(days=2), dead_age=HOUR, attempts=5)
    before = table_rows(db)

    dry = cli(database_url, "dead", "retry", "--type-prefix", "a_b.", "--dry-run")
    assert dry == Ran(0, "would retry 3 dead messages\n", "")
    assert table_rows(db) == before

    # The two selections are disjoint, so they may run at once.
    by_prefix, by_age = cli_many(
        database_url,
        ["dead", "retry", "--type-prefix", "a_b.", "--batch-size", "2"],
        ["dead", "retry", "--older-than", "1d"],
    )
    assert by_prefix == Ran(0, "retried 3 dead messages\n", "")
    assert by_age == Ran(0, "retried 1 dead message\n", "")
    after = table_rows(db)
    assert after == {**before, **{i: ("pending", 0) for i in [*ours, old]}}
    assert after[lookalike] == after[young] == after[reborn] == ("dead", 5)


# -- purge ---------------------------------------------------------------------------------


def test_purge_deletes_exactly_the_old_rows_in_batches(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    old_published = [add(db, "m.x", "published", published_age=2 * HOUR) for _ in range(5)]
    recent_published = add(db, "m.x", "published", published_age=timedelta(minutes=10))
    # Created long ago but published recently: its age is its published_at.
    late = add(db, "m.x", "published", age=timedelta(days=9), published_age=timedelta(0))
    pending = add(db, "m.x", "pending", age=timedelta(days=9))
    leased = add(db, "m.x", "in_progress", age=timedelta(days=9))
    old_dead = add(db, "m.x", "dead", age=timedelta(days=9))
    young_dead = add(db, "m.x", "dead", age=HOUR)
    # Created nine days ago, but it died an hour ago: a dead letter to keep.
    late_dead = add(db, "m.x", "dead", age=timedelta(days=9), dead_age=HOUR)
    everything = set(table_rows(db))

    dry = cli(database_url, "purge", "published", "--older-than", "1h", "--dry-run")
    assert dry == Ran(0, "would purge 5 published messages older than 1h\n", "")
    assert set(table_rows(db)) == everything

    # Published and dead rows are disjoint, so both purges may run at once.
    ran, dead = cli_many(
        database_url,
        ["purge", "published", "--older-than", "1h", "--batch-size", "2", "--json"],
        ["purge", "dead", "--older-than", "1d"],
    )
    assert ran.code == 0, ran
    assert json.loads(ran.out) == {
        "purged": 5,
        "target": "published",
        "older_than_seconds": 3600.0,
        "batches": 3,
        "dry_run": False,
    }
    assert dead == Ran(0, "purged 1 dead message older than 1d\n", "")
    assert set(table_rows(db)) == everything - {*old_published, old_dead}
    assert {recent_published, late, pending, leased, young_dead, late_dead} <= set(table_rows(db))


def test_ctrl_c_during_a_purge_reports_exactly_what_was_deleted(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    db.execute(
        "INSERT INTO outbox (type, payload, status, published_at)"
        " SELECT 'm.x', '{}', 'published', now() - interval '2 days' FROM generate_series(1, 50000)"
    )
    process = start(["purge", "published", "--older-than", "1d", "--batch-size", "1"], database_url)
    try:
        deadline = time.monotonic() + 30
        while db.execute("SELECT count(*) > 49900 FROM outbox").fetchone() == (True,):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    left = db.execute("SELECT count(*) FROM outbox").fetchone()
    assert left is not None and 0 < left[0] < 50000
    assert (process.returncode, out) == (130, "")
    purged = 50000 - left[0]
    # The last batch may have committed after the command stopped listening.
    reported = {
        f"outbox: interrupted: at least {messages(n, 'published')} purged {IN_FLIGHT}\n"
        for n in (purged, purged - 1)
    }
    assert err in reported, err


# -- top -----------------------------------------------------------------------------------


def test_top_prints_one_json_line_per_sample(
    db: psycopg.Connection[Any], database_url: str
) -> None:
    add(db, "message.created", "pending", age=timedelta(seconds=5))
    add(db, "message.created", "pending")
    add(db, "document.preprocess.v1", "in_progress")
    add(db, "chat.sent", "dead")
    for _ in range(3):
        add(db, "message.created", "published", published_age=HOUR)

    ran, text = cli_many(
        database_url,
        ["top", "--iterations", "2", "--interval", "0.2", "--json"],
        ["top", "--iterations", "2", "--interval", "0.2"],
    )

    assert ran.code == 0, ran
    first, second = (json.loads(line) for line in ran.out.splitlines())
    for sample in (first, second):
        assert (sample["pending"], sample["in_progress"], sample["dead"]) == (2, 1, 1)
        assert 5 <= sample["oldest_claimable_age_seconds"] < 30
        assert sample["lag_p50_seconds"] is None  # nothing published between the samples
    rates = ("enqueued_per_second", "published_per_second", "dead_per_second")
    assert [first[r] for r in rates] == [None, None, None]
    assert [second[r] for r in rates] == [0.0, 0.0, 0.0]
    assert first["by_prefix"] == {
        "document.": {"pending": 0, "in_progress": 1, "published_per_second": None},
        "message.": {"pending": 2, "in_progress": 0, "published_per_second": None},
    }
    assert second["by_prefix"]["message."]["published_per_second"] == 0.0
    assert datetime.fromisoformat(second["time"]) > datetime.fromisoformat(first["time"])

    assert text.code == 0, text
    lines = text.out.splitlines()
    assert len(lines) == 2
    assert " pending=2 in_progress=1 dead=1 " in lines[0]
    assert "enqueued/s=- published/s=- dead/s=-" in lines[0]
    assert "enqueued/s=0.0 published/s=0.0 dead/s=0.0" in lines[1]
    assert "| message. pending=2 in_progress=0" in lines[1]


def test_ctrl_c_ends_top_with_exit_0(database_url: str) -> None:
    process = start(["top", "--interval", "0.2"], database_url)
    try:
        assert process.stdout is not None
        assert "pending=" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()


# -- the statements stay on their indexes ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
async def test_operator_statements_never_read_the_published_history(
    engine: AsyncEngine, generic: bool
) -> None:
    """With 20,000 published rows, each top, list, retry or purge statement reads about the
    rows it returns, never the whole history (custom and generic plans)."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, created_at, published_at)"
            " SELECT 'message.created', '{}', 'published', now() - g * interval '2 second',"
            "        now() - g * interval '1 second'"
            " FROM generate_series(1, 20000) g"
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, created_at, locked_until, dead_at)"
            " SELECT 'document.preprocess.v1', '{}', s, now() - g * interval '1 minute',"
            "        CASE WHEN s = 'in_progress' THEN now() + interval '1 minute' END,"
            "        CASE WHEN s = 'dead' THEN now() - g * interval '1 minute' END"
            " FROM generate_series(1, 20) g, unnest(ARRAY['pending', 'in_progress', 'dead']) s"
        )
        await conn.exec_driver_sql("ANALYZE outbox")
    now = datetime.now(UTC)
    window = {"since": now - timedelta(seconds=2), "until": now}
    dead = {"died_before": None, "died_after": None, "limit": 100}
    walk = {**dead, "now": None, "cursor_at": None, "cursor_id": None}
    ranges = tuple(type_ranges("document.") or ())
    old_enough = {"cutoff": now - timedelta(hours=4), "limit": 1000}
    # (statement, parameters, most rows its plan may read: a few times what it returns)
    statements: list[tuple[Any, dict[str, object], int]] = [
        (sql.LIVE_TOTALS, {"now": None}, 200),
        (sql.PUBLISHED_IN_WINDOW, window, 200),
        (sql.LIVE_BY_PREFIX, window, 200),
        (sql.dead_newest_first(False, ranges), dead, 200),
        (sql.dead_newest_first(False, None), dead, 200),
        (sql.dead_batch(False, ranges), walk, 200),
        (sql.retry_dead_batch(True, None), {**walk, "ids": [1, 2]}, 200),
        (sql.retry_dead_batch(False, None), walk, 200),
        (sql.COUNT_DEAD_BEFORE, {"cutoff": now}, 200),
        (sql.PURGE_DEAD, {"cutoff": now, "limit": 1000, "cursor_at": None, "cursor_id": None}, 200),
        (sql.PURGE_PUBLISHED, {**old_enough, "cursor_at": None, "cursor_id": None}, 4000),
        # A count of what the purge would delete reads those (5,600) rows, on the index.
        (sql.COUNT_PUBLISHED_BEFORE, {"cutoff": now - timedelta(hours=4)}, 6000),
    ]
    for statement, params, most in statements:
        async with engine.connect() as conn:
            executed = await plan(conn, (statement, params), generic)
            await conn.rollback()
        read = scans(executed)
        assert ("Seq Scan", None) not in read, (statement, read)
        assert rows_read(executed) <= most, (statement, rows_read(executed), read)


@pytest.mark.anyio
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("target", ["retry dead", "purge dead", "purge published"])
async def test_a_batch_reads_only_its_rows_however_many_came_before(
    engine: AsyncEngine, generic: bool, target: str
) -> None:
    """A batch of 100 in the middle of 5,000 rows reads about 100 index entries, not the
    rows before its cursor (which an old snapshot would keep in the index after a purge),
    and not a whole group that died in one statement (one ``dead_at``)."""
    dead = target.endswith("dead")
    async with engine.begin() as conn:
        if dead:  # 5,000 rows that died in one statement: one dead_at
            await conn.exec_driver_sql(
                "INSERT INTO outbox (type, payload, status)"
                " SELECT 'm.x', '{}', 'dead' FROM generate_series(1, 5000)"
            )
        else:  # published a millisecond apart
            await conn.exec_driver_sql(
                "INSERT INTO outbox (type, payload, status, published_at)"
                " SELECT 'm.x', '{}', 'published', now() - g * interval '1 millisecond'"
                " FROM generate_series(1, 5000) g"
            )
        await conn.exec_driver_sql("ANALYZE outbox")
        cursor_at, cursor_id = (
            await conn.exec_driver_sql(
                "SELECT coalesce(dead_at, published_at) AS age, id FROM outbox"
                " ORDER BY age, id OFFSET 2500 LIMIT 1"
            )
        ).one()
    cursor = {"limit": 100, "cursor_at": cursor_at, "cursor_id": cursor_id}
    statement: Any
    if target == "retry dead":
        statement = sql.retry_dead_batch(False, None)
        params = {**cursor, "died_before": None, "died_after": None, "now": None}
    else:
        statement = sql.PURGE_DEAD if dead else sql.PURGE_PUBLISHED
        params = {**cursor, "cutoff": datetime.now(UTC)}
    async with engine.connect() as conn:
        executed = await plan(conn, (statement, params), generic)
        await conn.rollback()
    assert ("Seq Scan", None) not in scans(executed)
    # The batch's 100 rows: chosen on the index, fetched by primary key, changed. With
    # ``created_at`` alone in the dead index the scan read 2,500+ entries to sort them.
    assert rows_read(executed) <= 400, (rows_read(executed), scans(executed))


# -- durations (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1w2d3h4m5s", 788645),
        ("45", 45),
        ("0.5", 0.5),
        ("1.5h", 5400),
        ("0", 0),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "-5m", "5x", "1h30", "m", "30m1h", "1h 30m", "nan", "1e3"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["90s", "1h30m", "7d", "1w2d3h4m5s", "0.5s"])
def test_durations_format_back_to_themselves(text: str) -> None:
    expected = {"90s": "1m30s", "1w2d3h4m5s": "9d3h4m5s"}.get(text, text)
    assert format_duration(parse_duration(text)) == expected
