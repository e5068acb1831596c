"""The document worker and the sidecar as real processes: PostgreSQL, uvicorn, Redis."""

from __future__ import annotations

import http.server
import json
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from devservers import LocalServices, free_port
from outbox import (
    ClaimedMessage,
    NewMessage,
    claim_batch,
    enqueue,
    enqueue_many,
    mark_dead,
    reschedule,
)
from outbox.runtime.runner import EXIT_BAD_SETTINGS, EXIT_UNREACHABLE
from outbox.storage.migrate import downgrade, upgrade
from sidecar.chunking import split
from sidecar.extract import extract_text
from tests.conftest import query
from tests.workerproc import WorkerProcess, run_to_exit, subscribed, wait_until

pytestmark = pytest.mark.anyio

DOCUMENT = "workers.document"
PREPROCESS = "document.preprocess.v1"
TOKEN = "test-sidecar-token"
USER = "user-1"

Start = Callable[..., WorkerProcess]


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The module's database with the outbox and the documents tables empty."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE documents CASCADE")
    yield engine


@pytest.fixture
def start_sidecar(database_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start ``python -m sidecar`` (on ``port``, else a free one); stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*, port: int | None = None, healthy: bool = True, **env: str) -> WorkerProcess:
        port = port or free_port()
        sidecar = WorkerProcess(
            "sidecar",
            {
                "DATABASE_URL": database_url,
                "SIDECAR_TOKEN": TOKEN,
                "SIDECAR_PORT": str(port),
                **env,
            },
            tmp_path / f"sidecar-{len(started)}.log",
            port=port,
        )
        started.append(sidecar)
        if healthy:
            sidecar.wait_http(f"http://127.0.0.1:{port}/healthz")
        else:
            sidecar.wait_for_event(
                f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)"
            )
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def worker_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SIDECAR_TOKEN": TOKEN,
        "LOCK_SECONDS": "5",
        "REAP_INTERVAL_SECONDS": "0.5",
        "POLL_INTERVAL_MS": "200",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "SIDECAR_TIMEOUT_SECONDS": "10",
        "HANDLER_TIMEOUT_SECONDS": "20",
        "LOG_LEVEL": "DEBUG",
    }


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Start]:
    """Start a worker (``module``: the document worker by default) with the sidecar on port
    ``sidecar``; every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(sidecar: int | None, module: str = DOCUMENT, **env: str) -> WorkerProcess:
        name = f"{module.rsplit('.', 1)[-1]}-{len(started)}"
        url = {} if sidecar is None else {"SIDECAR_BASE_URL": f"http://127.0.0.1:{sidecar}"}
        worker = WorkerProcess(
            module, {**worker_env, **url, "WORKER_ID": name, **env}, tmp_path / f"{name}.log"
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


async def insert_document(
    conn: AsyncConnection, content: bytes, content_type: str = "text/plain", user: str = USER
) -> uuid.UUID:
    result = await conn.execute(
        text(
            "INSERT INTO documents (user_id, title, content_type, content)"
            " VALUES (:user, 'a title', :type, :content) RETURNING id"
        ),
        {"user": user, "type": content_type, "content": content},
    )
    return result.scalar_one()  # type: ignore[no-any-return]


async def add_document(
    db: AsyncEngine, content: bytes, content_type: str = "text/plain", user: str = USER
) -> tuple[uuid.UUID, int]:
    """A document and its preprocess message, committed in one transaction."""
    async with db.begin() as conn:
        document_id = await insert_document(conn, content, content_type)
        payload = {"documentId": str(document_id), "userId": user}
        message_id = await enqueue(conn, PREPROCESS, payload, key=str(document_id))
    return document_id, message_id


async def document(db: AsyncEngine, document_id: uuid.UUID) -> tuple[str, str | None]:
    """(processing_status, processing_error)."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT processing_status, processing_error FROM documents WHERE id = :id"),
                {"id": document_id},
            )
        ).one()
    return row[0], row[1]


async def message(db: AsyncEngine, message_id: int) -> dict[str, Any]:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, attempts, error, locked_until - now() AS lease_left"
                    " FROM outbox WHERE id = :id"
                ),
                {"id": message_id},
            )
        ).one()
    return dict(row._mapping)


async def chunks(db: AsyncEngine, document_id: uuid.UUID) -> list[tuple[int, str]]:
    async with db.connect() as conn:
        result = await conn.execute(
            text("SELECT ordinal, text FROM document_chunks WHERE document_id = :id ORDER BY 1"),
            {"id": document_id},
        )
        return [(row[0], row[1]) for row in result]


async def wait_for_document(
    db: AsyncEngine, document_id: uuid.UUID, status: str, timeout: float = 15
) -> None:
    async def reached() -> bool:
        return (await document(db, document_id))[0] == status

    await wait_until(reached, timeout, f"document {document_id} to be {status}")


async def wait_for_message(
    db: AsyncEngine, message_id: int, status: str, timeout: float = 15
) -> None:
    async def reached() -> bool:
        return (await message(db, message_id))["status"] == status

    await wait_until(reached, timeout, f"message {message_id} to be {status}")


def parsed(sidecar: WorkerProcess, document_id: uuid.UUID) -> list[dict[str, Any]]:
    return [e for e in sidecar.events("document.parsed") if e["id"] == str(document_id)]


MARKDOWN = "\n\n".join(
    f"## Section {n}\n\nThis is **paragraph** {n} of the handbook. " + "Words follow here. " * 30
    for n in range(6)
).encode()


# -- the flow -----------------------------------------------------------------------------------


async def test_a_document_committed_with_its_message_ends_processed_with_chunks(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    start_worker(sidecar.port)
    document_id, message_id = await add_document(db, MARKDOWN, "text/markdown; charset=utf-8")
    async with db.begin() as conn:  # rolled back: neither the document nor its message exist
        rolled_back = await insert_document(conn, b"never", "text/plain")
        await enqueue(conn, PREPROCESS, {"documentId": str(rolled_back), "userId": USER})
        await conn.rollback()

    await wait_for_message(db, message_id, "published")
    assert await document(db, document_id) == ("processed", None)
    expected = split(extract_text(MARKDOWN, "text/markdown"), size=1000, overlap=200)
    stored = await chunks(db, document_id)
    assert [ordinal for ordinal, _ in stored] == list(range(len(expected)))
    assert [chunk for _, chunk in stored] == [c.text for c in expected]
    assert len(expected) >= 4 and "**" not in stored[0][1] and "##" not in stored[0][1]
    assert (await message(db, message_id))["attempts"] == 1
    (event,) = parsed(sidecar, document_id)
    assert event["idempotency_key"] == str(message_id)
    async with db.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM outbox"))
    assert count == 1


async def test_requests_for_one_document_are_keyed_by_it_and_run_one_after_another(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    """Re-process requests without a key: documents_0004 keys them by document, and the
    worker (ORDERING=key) parses them in order, never two at once."""
    document_id, first = await add_document(db, MARKDOWN, "text/markdown")
    payload = {"documentId": str(document_id), "userId": USER}
    async with db.begin() as conn:
        again = [await enqueue(conn, PREPROCESS, payload) for _ in range(3)]
    sidecar = start_sidecar()
    start_worker(sidecar.port)
    for message_id in [first, *again]:
        await wait_for_message(db, message_id, "published")
    async with db.connect() as conn:
        rows = (await conn.execute(text("SELECT id, key, seq FROM outbox ORDER BY id"))).all()
    assert [row.key for row in rows] == [str(document_id)] * 4
    assert [row.id for row in sorted(rows, key=lambda row: row.seq)] == [first, *again]
    events = parsed(sidecar, document_id)
    assert [int(e["idempotency_key"]) for e in events] == [first, *again]
    ends = [datetime.fromisoformat(e["ts"]).timestamp() for e in events]
    starts = [end - e["duration_ms"] / 1000 for end, e in zip(ends, events, strict=True)]
    for end, next_start in zip(ends, starts[1:], strict=False):
        assert next_start >= end - 0.002, "two parses of one document overlapped"


async def test_the_sidecar_down_for_a_while_then_up_the_document_still_ends_processed(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    worker = start_worker(
        sidecar.port,
        MAX_ATTEMPTS="2",
        BACKOFF_BASE_SECONDS="0.2",
        BACKOFF_MAX_SECONDS="0.4",
        TRANSPORT_RETRY_MAX_SECONDS="0.5",
    )
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    document_id, message_id = await add_document(db, b"plain words for the outage test")

    # Attempt 1 fails and is retried; attempt 2 would be the last, so the outage hands the
    # message back uncounted instead of killing it, again and again while the sidecar is down.
    worker.wait_for_event("transport.unavailable", timeout=15)
    await anyio.sleep(2)
    state = await message(db, message_id)
    assert state["status"] in ("pending", "in_progress") and state["attempts"] <= 2
    assert "unreachable" in (state["error"] or "")
    assert await document(db, document_id) == ("processing", None)

    restarted = start_sidecar(port=sidecar.port)
    await wait_for_message(db, message_id, "published", timeout=20)
    assert await document(db, document_id) == ("processed", None)
    assert (await message(db, message_id))["attempts"] == 2
    assert len(parsed(restarted, document_id)) == 1
    assert worker.events("message.dead") == []


async def test_404_403_422_and_malformed_messages_are_final_at_once(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    start_worker(sidecar.port)
    missing = uuid.uuid4()
    async with db.begin() as conn:
        wrong_user = await insert_document(conn, b"hello", user="someone-else")
        image = await insert_document(conn, b"\x89PNG\r\n", "image/png")
        latin = await insert_document(conn, b"caf\xe9", "text/plain")  # not UTF-8
        no_user = await insert_document(conn, b"hello")
        ids = await enqueue_many(
            conn,
            [
                NewMessage(PREPROCESS, {"documentId": str(missing), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(wrong_user), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(image), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(latin), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(no_user)}),
                NewMessage(PREPROCESS, {"documentId": "not-a-uuid", "userId": USER}),
                NewMessage("document.summarize.v1", {"documentId": str(no_user)}),
            ],
        )
    for message_id in ids:
        await wait_for_message(db, message_id, "dead")
    rows = [await message(db, message_id) for message_id in ids]
    assert [row["attempts"] for row in rows] == [1] * len(ids)
    errors = [row["error"] for row in rows]
    assert errors[0] == f"document {missing} does not exist"
    assert errors[1] == f"document {wrong_user} does not belong to the message's userId"
    assert errors[2].startswith("sidecar answered 422 Unprocessable") and "image/png" in errors[2]
    assert errors[3].startswith("sidecar answered 422 Unprocessable") and "utf-8" in errors[3]
    assert errors[4].startswith(f"malformed {PREPROCESS} payload: userId: Field required")
    assert errors[5].startswith(f"malformed {PREPROCESS} payload: documentId: ")
    assert errors[6] == (
        f"unknown document type 'document.summarize.v1': this worker handles {PREPROCESS}"
    )
    assert await document(db, wrong_user) == ("pending", None)  # not its message's to fail
    assert await document(db, image) == ("failed", errors[2])
    assert await document(db, latin) == ("failed", errors[3])
    assert await document(db, no_user) == ("pending", None)  # no userId: no owner's message
    assert len(sidecar.events("parse.rejected")) == 2  # the others never reached it


async def test_a_sidecar_slower_than_the_lease_keeps_it_and_parses_once(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    worker = start_worker(sidecar.port, LOCK_SECONDS="1", REAP_INTERVAL_SECONDS="0.2")
    async with db.connect() as blocker:
        # The sidecar replaces chunks under this lock: its parse waits 3 leases for it.
        await blocker.execute(text("LOCK TABLE document_chunks IN EXCLUSIVE MODE"))
        document_id, message_id = await add_document(db, b"slow but steady")
        await wait_for_document(db, document_id, "processing")
        await anyio.sleep(3)
        state = await message(db, message_id)
        assert state["status"] == "in_progress"
        assert state["lease_left"].total_seconds() > 0  # extended by the heartbeat
        await blocker.rollback()
    await wait_for_message(db, message_id, "published")
    assert await document(db, document_id) == ("processed", None)
    assert (await message(db, message_id))["attempts"] == 1
    assert len(parsed(sidecar, document_id)) == 1
    assert worker.events("lease.reaped") == [] and worker.events("lease.lost") == []


async def test_a_worker_killed_on_the_last_attempt_leaves_the_document_failed_by_the_reaper(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    env = {"MAX_ATTEMPTS": "1", "LOCK_SECONDS": "1", "REAP_INTERVAL_SECONDS": "0.2"}
    doomed = start_worker(sidecar.port, **env)
    async with db.connect() as blocker:
        await blocker.execute(text("LOCK TABLE document_chunks IN EXCLUSIVE MODE"))
        document_id, message_id = await add_document(db, b"the last attempt")
        await wait_for_document(db, document_id, "processing")
        doomed.signal(signal.SIGKILL)
        doomed.wait(5)
        await blocker.rollback()
    start_worker(sidecar.port, **env)  # its reaper finds the expired lease at MAX_ATTEMPTS
    await wait_for_message(db, message_id, "dead")
    reason = "lease expired (held by document-0) after attempt 1"
    assert await message(db, message_id) == {
        "status": "dead",
        "attempts": 1,
        "error": reason,
        "lease_left": None,
    }
    # The documents branch's trigger failed the document in the reaper's transaction.
    assert await document(db, document_id) == ("failed", reason)


async def due_in(db: AsyncEngine, message_id: int) -> tuple[str, float]:
    """(status, seconds until next_attempt_at)."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, extract(epoch FROM next_attempt_at - now())"
                    " FROM outbox WHERE id = :id"
                ),
                {"id": message_id},
            )
        ).one()
    return row[0], float(row[1])


async def test_a_503_outage_behind_the_sidecar_never_kills_and_retry_after_is_a_floor(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    healthy = start_sidecar()
    port = healthy.port
    worker = start_worker(
        port, MAX_ATTEMPTS="2", BACKOFF_SCHEDULE="0.1", TRANSPORT_RETRY_MAX_SECONDS="0.5"
    )
    healthy.stop()
    # Same port, its database gone: every parse answers 503 with Retry-After: 1.
    gone = f"postgresql://root@127.0.0.1:{free_port()}/x"
    broken = start_sidecar(port=port, healthy=False, DATABASE_URL=gone)
    document_id, message_id = await add_document(db, b"text")

    async def first_retry_scheduled() -> bool:
        status, seconds = await due_in(db, message_id)
        return status == "pending" and seconds > 0.7  # the 1 s, not the 0.1 s backoff

    await wait_until(first_retry_scheduled, 10, "a retry scheduled by Retry-After")
    worker.wait_for_event("transport.unavailable", timeout=10)  # the last attempt handed back
    assert "503 Service Unavailable" in (await message(db, message_id))["error"]
    assert await document(db, document_id) == ("processing", None)

    broken.stop()
    start_sidecar(port=port)
    await wait_for_message(db, message_id, "published", timeout=20)
    assert await document(db, document_id) == ("processed", None)
    assert (await message(db, message_id))["attempts"] == 2
    assert worker.events("message.dead") == []


class BadGateway(http.server.BaseHTTPRequestHandler):
    """A stand-in for a proxy in front of the sidecar: healthy, but every parse gets 502."""

    def do_GET(self) -> None:
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(502, b'{"detail": "upstream went away"}', {"Retry-After": "1"})

    def _answer(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[int]:
    """The port of a :class:`BadGateway` server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_a_5xx_is_retried_after_retry_after_then_the_document_fails(
    db: AsyncEngine, bad_gateway: int, start_worker: Start
) -> None:
    worker = start_worker(bad_gateway, MAX_ATTEMPTS="2", BACKOFF_SCHEDULE="0.1")
    document_id, message_id = await add_document(db, b"text")

    async def first_retry_scheduled() -> bool:
        status, seconds = await due_in(db, message_id)
        return status == "pending" and seconds > 0.7

    await wait_until(first_retry_scheduled, 10, "a retry scheduled by Retry-After")
    await wait_for_message(db, message_id, "dead", timeout=10)
    state = await message(db, message_id)
    error = "sidecar answered 502 Bad Gateway: upstream went away"
    assert state["attempts"] == 2 and state["error"] == error
    # The runtime's reschedule ran out of attempts; the trigger says so on the document.
    assert await document(db, document_id) == ("failed", f"gave up after 2 attempts: {error}")
    (retry,) = worker.events("message.retried")
    assert retry["error"] == error


async def test_the_mvp_policy_fails_the_document_on_the_first_failure(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    start_worker(sidecar.port, RETRY_TRANSIENT_FAILURES="false")
    sidecar.stop()
    document_id, message_id = await add_document(db, b"text")
    await wait_for_message(db, message_id, "dead")
    state = await message(db, message_id)
    assert state["attempts"] == 1 and "sidecar unreachable" in state["error"]
    assert await document(db, document_id) == ("failed", state["error"])


async def test_a_message_naming_another_users_document_changes_nothing_and_dies(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    start_worker(sidecar.port)
    async with db.begin() as conn:
        done = await insert_document(conn, b"parsed already")
        await conn.execute(
            text("UPDATE documents SET processing_status = 'processed' WHERE id = :id"),
            {"id": done},
        )
        waiting = await insert_document(conn, b"not parsed yet")
        payloads: list[dict[str, object]] = [
            {"documentId": str(d), "userId": user}
            for d in (done, waiting)
            for user in ("user-2", f"{USER} ", 7)
        ]
        payloads += [
            {"documentId": str(done)},
            {"documentId": str(done), "userId": ""},
            {"documentId": str(done), "userId": {"id": USER}},
            {"documentId": str(done), "userId": 3.5},
        ]
        ids = await enqueue_many(conn, [NewMessage(PREPROCESS, p) for p in payloads])
    for message_id in ids:
        await wait_for_message(db, message_id, "dead")
    rows = [await message(db, message_id) for message_id in ids]
    assert [row["attempts"] for row in rows] == [1] * len(ids)
    for payload, row in zip(payloads[:6], rows[:6], strict=True):
        expected = f"document {payload['documentId']} does not belong to the message's userId"
        assert row["error"] == expected
    for row in rows[6:]:
        assert row["error"].startswith(f"malformed {PREPROCESS} payload: userId")
    assert await document(db, done) == ("processed", None)
    assert await document(db, waiting) == ("pending", None)
    assert sidecar.events("parse.rejected") == [] and await chunks(db, waiting) == []


async def test_a_sidecar_outage_past_sidecar_outage_max_seconds_follows_the_attempt_policy(
    db: AsyncEngine, start_sidecar: Start, start_worker: Start
) -> None:
    healthy = start_sidecar()
    worker = start_worker(
        healthy.port,
        MAX_ATTEMPTS="2",
        BACKOFF_SCHEDULE="0.1",
        TRANSPORT_RETRY_MAX_SECONDS="0.5",
        SIDECAR_OUTAGE_MAX_SECONDS="2",
    )
    healthy.stop()
    # Same port, its database gone: every parse answers 503 (an outage).
    gone = f"postgresql://root@127.0.0.1:{free_port()}/x"
    start_sidecar(port=healthy.port, healthy=False, DATABASE_URL=gone)
    document_id, message_id = await add_document(db, b"text")
    await wait_for_message(db, message_id, "dead", timeout=20)
    error = (
        "sidecar answered 503 Service Unavailable: database unavailable, retry later"
        " (an outage past SIDECAR_OUTAGE_MAX_SECONDS)"
    )
    assert await message(db, message_id) == {
        "status": "dead",
        "attempts": 2,
        "error": error,
        "lease_left": None,
    }
    assert await document(db, document_id) == ("failed", f"gave up after 2 attempts: {error}")
    # Held back (the last attempt never taken) until the bound; logged when it began and
    # when it passed the bound, not at every failure.
    assert worker.events("transport.unavailable")
    outage = worker.events("sidecar.outage")
    assert [e["over_limit"] for e in outage] == [False, True], outage
    # Past the bound (> 2 s), logged rounded to a tenth: 2.0 when it passed by under 0.05 s.
    assert outage[1]["lasted_s"] >= 2 and outage[1]["failures"] > 2


# -- the documents trigger: the only writer of failed ----------------------------------------

BY_HAND = "by-hand"


async def claim_all(db: AsyncEngine) -> list[ClaimedMessage]:
    async with db.begin() as conn:
        return await claim_batch(
            conn, limit=100, lock_seconds=30, worker_id=BY_HAND, include_type_prefix="document."
        )


async def test_a_message_dying_fails_its_document_in_that_transaction_with_no_worker_running(
    db: AsyncEngine,
) -> None:
    async with db.begin() as conn:
        abandoned, retried, processed, by_sql = [
            await insert_document(conn, b"hello") for _ in range(4)
        ]
        await conn.execute(
            text("UPDATE documents SET processing_status = 'processed' WHERE id = :id"),
            {"id": processed},
        )
        ids = await enqueue_many(
            conn,
            [
                NewMessage(PREPROCESS, {"documentId": str(abandoned), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(retried), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(processed), "userId": USER}),
                NewMessage(PREPROCESS, {"documentId": str(by_sql).upper(), "userId": USER}),
            ],
        )
    first = {m.id: m for m in await claim_all(db)}
    assert sorted(first) == ids
    reason = "sidecar answered 422 Unprocessable Entity: the document has no text to extract"
    bad_gateway = "sidecar answered 502 Bad Gateway: upstream went away"
    async with db.begin() as conn:
        given_up = [first[ids[0]], first[ids[2]]]
        assert (await mark_dead(conn, given_up, worker_id=BY_HAND, error=reason)).ok
        (state,) = (
            await conn.execute(
                text("SELECT processing_status FROM documents WHERE id = :id"),
                {"id": abandoned},
            )
        ).one()
        assert state == "failed"  # by the ack's own statement, before it commits
        once = await reschedule(
            conn, [first[ids[1]]], worker_id=BY_HAND, error=bad_gateway, max_attempts=2, delay=0
        )
        assert once.retried == {ids[1]}
        await conn.execute(text("UPDATE outbox SET status = 'dead' WHERE id = :id"), {"id": ids[3]})
    assert await document(db, abandoned) == ("failed", reason)
    assert await document(db, processed) == ("processed", None)  # a processed one stays
    assert await document(db, retried) == ("pending", None)  # retried: not dead yet
    assert await document(db, by_sql) == ("failed", f"outbox message {ids[3]} is dead")

    (second,) = await claim_all(db)
    assert second.id == ids[1] and second.attempts == 2
    async with db.begin() as conn:
        twice = await reschedule(
            conn, [second], worker_id=BY_HAND, error=bad_gateway, max_attempts=2, delay=0
        )
        assert twice.dead == {ids[1]}
    state = await message(db, ids[1])
    assert state["status"] == "dead" and state["error"] == bad_gateway
    failed = ("failed", f"gave up after 2 attempts: {bad_gateway}")
    assert await document(db, retried) == failed


async def test_a_dead_message_without_a_uuid_document_id_or_its_owner_touches_no_document(
    db: AsyncEngine,
) -> None:
    async with db.begin() as conn:
        bystander = await insert_document(conn, b"hello")
        payloads: list[object] = [
            {"documentId": "not-a-uuid", "userId": USER},
            {"documentId": 42},
            {"documentId": None},
            {"documentId": {"id": str(bystander)}},
            {"documentId": [str(bystander)]},
            {"documentId": f"{bystander}\n"},
            {"documentId": f"{bystander}' OR true --"},
            {"documentId": f"{{{bystander}}}"},
            {"documentId": ""},
            {"document_id": str(bystander)},
            {"documentId": str(uuid.uuid4()), "userId": USER},  # a UUID, but no such document
            {"documentId": str(bystander)},  # no userId
            {"documentId": str(bystander), "userId": "user-2"},  # another user
            {"documentId": str(bystander), "userId": None},
            {"documentId": str(bystander), "userId": ""},
            {"documentId": str(bystander), "userId": [USER]},
            {"documentId": str(bystander), "userId": {"id": USER}},
            {"documentId": str(bystander), "userId": f"{USER} "},
            {},
            [str(bystander)],
            str(bystander),
            7,
            None,
        ]
        for payload in payloads:
            await conn.execute(
                text("INSERT INTO outbox (type, payload) VALUES (:type, CAST(:payload AS jsonb))"),
                {"type": PREPROCESS, "payload": json.dumps(payload)},
            )
    claimed = await claim_all(db)
    assert len(claimed) == len(payloads)
    async with db.begin() as conn:
        result = await mark_dead(conn, claimed, worker_id=BY_HAND, error="malformed")
    assert result.applied == {m.id for m in claimed}
    async with db.connect() as conn:
        statuses = (await conn.execute(text("SELECT DISTINCT status FROM outbox"))).all()
    assert statuses == [("dead",)]
    assert await document(db, bystander) == ("pending", None)


def test_the_trigger_function_downgrades_to_documents_0002s_then_0001s(
    empty_database: str,
) -> None:
    def dies_on_attempt_2(user: str = "u") -> object:
        """A fresh document of user ``u`` whose message (for ``user``) dies on its second
        attempt: the document's stored error."""
        query(
            empty_database,
            "WITH d AS (INSERT INTO documents (user_id, content_type, content)"  # noqa: S608
            " VALUES ('u', 'text/plain', 'x') RETURNING id)"
            " INSERT INTO outbox (type, payload, status, attempts, error)"
            " SELECT 'document.preprocess.v1',"
            f" jsonb_build_object('documentId', id, 'userId', '{user}'),"
            " 'in_progress', 2, 'boom' FROM d",
        )
        query(empty_database, "UPDATE outbox SET status = 'dead' WHERE status = 'in_progress'")
        ((error,),) = query(
            empty_database,
            "SELECT d.processing_error FROM outbox o"
            " JOIN documents d ON d.id = (o.payload->>'documentId')::uuid"
            " ORDER BY o.id DESC LIMIT 1",
        )
        return error

    upgrade(empty_database, documents=True)
    assert dies_on_attempt_2() == "gave up after 2 attempts: boom"
    assert dies_on_attempt_2("someone-else") is None
    downgrade(empty_database, "documents_0002")
    assert dies_on_attempt_2("someone-else") == "gave up after 2 attempts: boom"
    downgrade(empty_database, "documents_0001")
    assert dies_on_attempt_2() == "boom"
    upgrade(empty_database, documents=True)
    assert dies_on_attempt_2() == "gave up after 2 attempts: boom"
    assert dies_on_attempt_2("someone-else") is None


async def test_chat_and_document_workers_share_the_table_and_never_take_each_others_rows(
    db: AsyncEngine, services: LocalServices, start_sidecar: Start, start_worker: Start
) -> None:
    sidecar = start_sidecar()
    chat = start_worker(None, "workers.chat", REDIS_URL=services.redis_url)
    documents = start_worker(sidecar.port)
    chat_ids: list[int] = []
    document_ids: dict[int, uuid.UUID] = {}
    async with subscribed(services.redis_url, "chat:*") as received:
        for round_ in range(5):
            async with db.begin() as conn:
                chat_ids += await enqueue_many(
                    conn, [NewMessage("message.created", {"n": n}, key="r") for n in range(4)]
                )
            document_id, message_id = await add_document(db, f"document {round_}".encode())
            document_ids[message_id] = document_id
        await received.wait_for_ids(chat_ids, timeout=15)
        for message_id in document_ids:
            await wait_for_message(db, message_id, "published")
        await anyio.sleep(0.3)
    assert sorted(received.ids) == chat_ids

    def published_by(worker: WorkerProcess) -> list[int]:
        return sorted(e["id"] for e in worker.events("message.published"))

    assert published_by(chat) == chat_ids
    assert published_by(documents) == sorted(document_ids)
    for document_id in document_ids.values():
        assert await document(db, document_id) == ("processed", None)


# -- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SIDECAR_BASE_URL": ""}, "SIDECAR_BASE_URL (or DOCUMENT_SIDECAR_BASE_URL): required"),
        ({"SIDECAR_BASE_URL": "localhost:8000"}, "SIDECAR_BASE_URL"),
        ({"SIDECAR_TOKEN": "hunter2"}, "SIDECAR_TOKEN: must be at least 8 characters"),
        ({"INCLUDE_TYPE_PREFIXES": "message."}, "INCLUDE_TYPE_PREFIXES must name only document."),
        ({"SIDECAR_TIMEOUT_SECONDS": "30"}, "SIDECAR_TIMEOUT_SECONDS must be below"),
        ({"DOCUMENTS_TABLE": "docs; DROP TABLE outbox"}, "DOCUMENTS_TABLE"),
        ({"RETRY_TRANSIENT_FAILURES": "maybe"}, "RETRY_TRANSIENT_FAILURES"),
        ({"DOCUMENTS_STATUS_COLUMN": ""}, "status column must be named"),
        ({"SIDECAR_TOKEN": "tökenhunter2"}, "SIDECAR_TOKEN: must be printable ASCII"),
        ({"SIDECAR_BASE_URL": "ftp://admin:hunter2@x"}, "ftp://admin:***@x"),
        (
            {"SIDECAR_BASE_URL": "http://admin:hunter2@127.0.0.1:9"},
            "SIDECAR_BASE_URL (or DOCUMENT_SIDECAR_BASE_URL): must not carry credentials",
        ),
        ({"SIDECAR_BASE_URL": "http://admin@127.0.0.1:9"}, "must not carry credentials"),
        ({"SIDECAR_OUTAGE_MAX_SECONDS": "0"}, "SIDECAR_OUTAGE_MAX_SECONDS"),
        ({"DOCUMENTS_USER_ID_COLUMN": "owner id"}, "DOCUMENTS_TABLE / DOCUMENTS_*_COLUMN"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(
    worker_env: dict[str, str], env: Mapping[str, str], named: str
) -> None:
    merged = {**worker_env, "SIDECAR_BASE_URL": "http://127.0.0.1:9", **env}
    if not merged["SIDECAR_BASE_URL"]:
        del merged["SIDECAR_BASE_URL"]
    code, stderr = run_to_exit(DOCUMENT, merged)
    assert code == EXIT_BAD_SETTINGS, stderr
    assert named in stderr
    assert "Traceback" not in stderr and "hunter2" not in stderr


def test_either_sidecar_url_name_works_and_an_unreachable_sidecar_fails_start_up(
    worker_env: dict[str, str],
) -> None:
    port = free_port()
    env = {**worker_env, "STARTUP_TIMEOUT_SECONDS": "1"}
    code, stderr = run_to_exit(
        DOCUMENT, {**env, "DOCUMENT_SIDECAR_BASE_URL": f"http://127.0.0.1:{port}/"}
    )
    assert code == EXIT_UNREACHABLE, stderr
    assert f"sidecar at http://127.0.0.1:{port}: " in stderr


async def test_a_token_the_sidecar_refuses_fails_start_up(
    worker_env: dict[str, str], start_sidecar: Start
) -> None:
    sidecar = start_sidecar()
    env = {
        **worker_env,
        "STARTUP_TIMEOUT_SECONDS": "1",
        "SIDECAR_BASE_URL": f"http://127.0.0.1:{sidecar.port}",
        "SIDECAR_TOKEN": "not-the-sidecars-token",
    }
    code, stderr = run_to_exit(DOCUMENT, env)
    assert code == EXIT_UNREACHABLE, stderr
    assert "it refuses SIDECAR_TOKEN (401): the two sides differ" in stderr


async def test_a_missing_documents_table_fails_start_up_by_name(
    worker_env: dict[str, str], start_sidecar: Start
) -> None:
    sidecar = start_sidecar()
    env = {
        **worker_env,
        "STARTUP_TIMEOUT_SECONDS": "1",
        "SIDECAR_BASE_URL": f"http://127.0.0.1:{sidecar.port}",
        "DOCUMENTS_TABLE": "uploads",
    }
    code, stderr = run_to_exit(DOCUMENT, env)
    assert code == EXIT_UNREACHABLE, stderr
    assert "documents table 'uploads': relation \"uploads\" does not exist" in stderr
