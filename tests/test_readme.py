"""The Python examples of the README and of docs/ run as written against a real database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import admin, query

ROOT = Path(__file__).resolve().parent.parent


def examples(page: str) -> list[str]:
    """The ```python blocks of ``page`` (a path from the repository root), in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.DOTALL)


# Every page with Python examples, and how many it has: each one is run below.
EXPECTED_COUNTS = {
    "README.md": 3,
    "docs/documents.md": 1,
    "docs/operating.md": 1,  # PgBouncer engines: run in tests/test_pgbouncer.py
    "docs/table-and-migrations.md": 2,  # a host's env.py: run in tests/test_host_alembic.py
    "docs/workers.md": 1,
}


def test_the_readme_and_the_docs_have_their_examples() -> None:
    pages = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]
    counts = {page: len(examples(page)) for page in pages if examples(page)}
    assert counts == EXPECTED_COUNTS


def example(page: str, index: int) -> str:
    found = examples(page)
    return found[index] if index < len(found) else f"raise SystemExit('{page} has no #{index}')"


SYNC = example("README.md", 0)  # enqueue with a Session
ASYNC = example("README.md", 1)  # enqueue_many with an AsyncConnection
HANDLER = example("README.md", 2)  # a worker: PerMessage + run_worker_process
LOOP = example("docs/workers.md", 0)  # the bare claim/deliver/ack loop
DOCUMENT = example("docs/documents.md", 0)  # a document and its message in one transaction


def run(example: str, database_url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", example],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("example", "expected"),
    [(SYNC, "enqueued 1\n"), (ASYNC, "enqueued [1, 2]\n"), (LOOP, "")],
    ids=["sync", "async", "worker-loop-on-an-empty-table"],
)
def test_readme_example_runs_on_an_empty_table(
    database_url: str, example: str, expected: str
) -> None:
    admin(database_url, "TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY")
    assert run(example, database_url) == expected


def test_worker_loop_delivers_what_the_async_example_enqueued(database_url: str) -> None:
    admin(database_url, "TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY")
    run(ASYNC, database_url)  # one document row due now, one chat row due in a minute
    run(SYNC, database_url)  # one chat row due now
    output = run(LOOP, database_url)
    # The loop excludes "document." rows, and the delayed chat row is not due yet.
    assert output == "delivering 3 message.created {'body': 'hi', 'roomId': 'r1'}\n"


def test_the_handler_example_is_a_worker_that_delivers_gives_up_and_stops(
    database_url: str, tmp_path: Path
) -> None:
    admin(
        database_url,
        "TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY",
        "INSERT INTO outbox (type, payload) VALUES ('message.created', '{\"roomId\": \"r1\"}')",
    )
    run(SYNC, database_url)  # id 2, with a body
    log = tmp_path / "stderr"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", HANDLER],
            env={**os.environ, "DATABASE_URL": database_url, "POLL_INTERVAL_MS": "100"},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as worker,
    ):
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "delivered 2 hi\n", log.read_text()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = query(database_url, "SELECT id, status, error FROM outbox ORDER BY id")
                if all(status in ("published", "dead") for _, status, _ in rows):
                    break
                time.sleep(0.05)
            assert rows == [(1, "dead", "no body"), (2, "published", None)]
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_the_document_example_commits_the_document_with_its_message(database_url: str) -> None:
    admin(
        database_url,
        "TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY",
        "TRUNCATE documents CASCADE",
    )
    assert run(DOCUMENT, database_url) == "queued 1\n"
    rows = query(
        database_url,
        "SELECT d.processing_status, o.type, o.payload->>'userId'"
        " FROM documents d JOIN outbox o ON o.payload->>'documentId' = d.id::text",
    )
    assert rows == [("pending", "document.preprocess.v1", "u1")]
