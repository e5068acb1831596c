"""The README's Python examples run as written against a real database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import admin, query

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_its_four_examples() -> None:
    assert len(EXAMPLES) == 4


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
    ("index", "expected"),
    [(0, "enqueued 1\n"), (1, "enqueued [1, 2]\n"), (2, "")],
    ids=["sync", "async", "worker-loop-on-an-empty-table"],
)
def test_readme_example_runs_on_an_empty_table(
    database_url: str, index: int, expected: str
) -> None:
    admin(database_url, "TRUNCATE outbox RESTART IDENTITY")
    assert run(EXAMPLES[index], database_url) == expected


def test_worker_loop_delivers_what_the_async_example_enqueued(database_url: str) -> None:
    admin(database_url, "TRUNCATE outbox RESTART IDENTITY")
    run(EXAMPLES[1], database_url)  # one document row due now, one chat row due in 5 s
    run(EXAMPLES[0], database_url)  # one chat row due now
    output = run(EXAMPLES[2], database_url)
    # The loop excludes "document." rows, and the delayed chat row is not due yet.
    assert output == "delivering 3 message.created {'body': 'hi', 'roomId': 'r1'}\n"


def test_the_document_example_commits_the_document_with_its_message(database_url: str) -> None:
    admin(database_url, "TRUNCATE outbox RESTART IDENTITY", "TRUNCATE documents CASCADE")
    assert run(EXAMPLES[3], database_url) == "queued 1\n"
    rows = query(
        database_url,
        "SELECT d.processing_status, o.type, o.payload->>'userId'"
        " FROM documents d JOIN outbox o ON o.payload->>'documentId' = d.id::text",
    )
    assert rows == [("pending", "document.preprocess.v1", "u1")]
