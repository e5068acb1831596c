"""The sidecar under real uvicorn against real PostgreSQL: every answer the API promises."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devservers import free_port
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.anyio

TOKEN = "sidecar-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start(database_url: str, log: Path, **env: str) -> tuple[WorkerProcess, str]:
    port = free_port()
    process = WorkerProcess(
        "sidecar",
        {"DATABASE_URL": database_url, "SIDECAR_TOKEN": TOKEN, "SIDECAR_PORT": str(port), **env},
        log,
    )
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def sidecar(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("sidecar") / "sidecar.log"
    process, url = start(database_url, log, CHUNK_SIZE="100", CHUNK_OVERLAP="20")
    try:
        process.wait_http(f"{url}/healthz")
        yield url
    finally:
        process.stop()


@pytest.fixture
async def client(sidecar: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sidecar, timeout=10) as http:
        yield http


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE documents CASCADE")
    yield engine


async def add(
    db: AsyncEngine, content: bytes, content_type: str = "text/plain", user: str = "u1"
) -> uuid.UUID:
    async with db.begin() as conn:
        result = await conn.execute(
            text(
                "INSERT INTO documents (user_id, content_type, content)"
                " VALUES (:user, :type, :content) RETURNING id"
            ),
            {"user": user, "type": content_type, "content": content},
        )
        return result.scalar_one()  # type: ignore[no-any-return]


async def stored(db: AsyncEngine, document_id: uuid.UUID) -> list[tuple[int, str, int, int]]:
    async with db.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT ordinal, text, char_start, char_end FROM document_chunks"
                " WHERE document_id = :id ORDER BY ordinal"
            ),
            {"id": document_id},
        )
        return [tuple(row) for row in result]  # type: ignore[misc]


def parse_path(document_id: uuid.UUID | str) -> str:
    return f"/internal/documents/{document_id}/parse"


async def test_parse_stores_overlapping_chunks_and_a_repeat_replaces_them(
    db: AsyncEngine, client: httpx.AsyncClient
) -> None:
    body = " ".join(f"word{n}" for n in range(120)).encode()
    document_id = await add(db, body)
    first = await client.post(parse_path(document_id), json={"userId": "u1"}, headers=AUTH)
    assert first.status_code == 200, first.text
    summary = first.json()
    assert summary == {
        "documentId": str(document_id),
        "chunks": summary["chunks"],
        "characters": len(body),
        "contentType": "text/plain",
    }
    chunks = await stored(db, document_id)
    assert [c[0] for c in chunks] == list(range(summary["chunks"])) and len(chunks) >= 8
    assert all(len(c[1]) <= 100 for c in chunks)
    assert all(c[2] < previous[3] for previous, c in itertools.pairwise(chunks))
    assert chunks[0][2] == 0 and chunks[-1][3] == len(body)
    again = await client.post(
        parse_path(document_id), json={"userId": "u1"}, headers={**AUTH, "Idempotency-Key": "7"}
    )
    assert again.status_code == 200 and again.json() == summary
    assert await stored(db, document_id) == chunks


@pytest.mark.parametrize(
    ("content_type", "content", "expected"),
    [
        ("text/html", b"<p>Caf&eacute; <b>ol&eacute;</b></p><script>x()</script>", "Café olé"),
        ("text/plain; charset=latin-1", b"caf\xe9", "café"),
        ("text/markdown", b"# Title\n\nSome *emphasis* and [a link](http://x).", "Title"),
        ("text/plain", b"nul\x00 bytes \x07 are dropped", "nul bytes are dropped"),
    ],
)
async def test_supported_content_is_extracted(
    db: AsyncEngine, client: httpx.AsyncClient, content_type: str, content: bytes, expected: str
) -> None:
    document_id = await add(db, content, content_type)
    answer = await client.post(parse_path(document_id), json={"userId": "u1"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert (await stored(db, document_id))[0][1].startswith(expected)


async def test_a_pdf_is_extracted(db: AsyncEngine, client: httpx.AsyncClient) -> None:
    from tests.test_sidecar_text import pdf_with

    document_id = await add(db, pdf_with("Quarterly report"), "application/pdf")
    answer = await client.post(parse_path(document_id), json={"userId": "u1"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert (await stored(db, document_id))[0][1] == "Quarterly report"


async def test_refusals_name_their_reason_and_store_nothing(
    db: AsyncEngine, client: httpx.AsyncClient
) -> None:
    document_id = await add(db, b"hello")
    image = await add(db, b"\x89PNG", "image/png")
    broken_pdf = await add(db, b"%PDF-1.7 not really", "application/pdf")
    empty = await add(db, b"  \n ", "text/plain")
    good = {"userId": "u1"}
    cases = [
        (parse_path(document_id), good, {}, 401, "missing or wrong bearer token"),
        (parse_path("not-a-uuid"), ["bad"], {}, 401, "missing"),  # the token comes first
        (parse_path(document_id), good, {"Authorization": "Bearer wrong"}, 401, "missing"),
        (parse_path(document_id), good, {"Authorization": TOKEN}, 401, "missing"),
        (parse_path(uuid.uuid4()), good, AUTH, 404, "does not exist"),
        (parse_path(document_id), {"userId": "u2"}, AUTH, 403, "belongs to another user"),
        (parse_path(document_id), {"user": "u1"}, AUTH, 422, "Field required"),
        (parse_path(document_id), {"userId": ""}, AUTH, 422, "at least 1 character"),
        (parse_path(document_id), ["u1"], AUTH, 422, "valid dictionary"),
        (parse_path("not-a-uuid"), good, AUTH, 422, "valid UUID"),
        (parse_path(image), good, AUTH, 422, "unsupported content type 'image/png'"),
        (parse_path(broken_pdf), good, AUTH, 422, "not a readable PDF"),
        (parse_path(empty), good, AUTH, 422, "no text to extract"),
    ]
    for path, body, headers, status, detail in cases:
        answer = await client.post(path, json=body, headers=headers)
        assert (answer.status_code, detail in answer.text) == (status, True), (path, answer.text)
    lone_surrogate = await client.post(  # JSON can carry one; the answer must not echo it
        parse_path(document_id),
        content=b'{"userId": "\\ud800"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert lone_surrogate.status_code == 422 and "ud800" not in lone_surrogate.text
    for headers, status in (({}, 401), (AUTH, 200)):
        assert (await client.get("/internal/ping", headers=headers)).status_code == status
    undecodable = await client.post(
        parse_path(document_id),
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert undecodable.status_code == 422
    async with db.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM document_chunks")) == 0


async def test_a_document_too_slow_to_extract_is_refused_and_the_sidecar_stays_up(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    process, url = start(database_url, tmp_path / "s.log", PARSE_TIMEOUT_SECONDS="2")
    # The standard HTML parser is quadratic on this (minutes for these 400 KB).
    slow = await add(db, b"<a" * 200_000, "text/html")
    fine = await add(db, b"<p>fine</p>", "text/html")
    try:
        process.wait_http(f"{url}/healthz")
        async with httpx.AsyncClient(base_url=url, timeout=10, headers=AUTH) as http:
            refused = await http.post(parse_path(slow), json={"userId": "u1"})
            health = await http.get("/healthz")
            parsed = await http.post(parse_path(fine), json={"userId": "u1"})
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            "extracting the text took longer than PARSE_TIMEOUT_SECONDS (2 s)"
        )
        assert health.status_code == 200 and parsed.status_code == 200
        assert await stored(db, slow) == [] and (await stored(db, fine))[0][1] == "fine"
    finally:
        process.stop()


async def test_an_unreachable_database_answers_503_with_retry_after(tmp_path: Path) -> None:
    process, url = start(f"postgresql://root@127.0.0.1:{free_port()}/gone", tmp_path / "s.log")
    try:
        process.wait_for_event("Application startup complete.")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            health = await http.get("/healthz")
            answer = await http.post(parse_path(uuid.uuid4()), json={"userId": "u"}, headers=AUTH)
        assert health.status_code == 503 and "database" in health.json()["error"]
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    finally:
        process.stop()
    assert process.wait(5) == 0


def test_bad_settings_stop_start_up_naming_them(database_url: str) -> None:
    from tests.workerproc import run_to_exit

    code, stderr = run_to_exit(
        "sidecar",
        {"DATABASE_URL": database_url, "SIDECAR_TOKEN": "t0ken-long", "CHUNK_OVERLAP": "1000"},
    )
    assert code == 2 and "CHUNK_OVERLAP must be below CHUNK_SIZE (1000 >= 1000)" in stderr
    code, stderr = run_to_exit("sidecar", {"DATABASE_URL": database_url})
    assert code == 2 and "SIDECAR_TOKEN: required, not set" in stderr
