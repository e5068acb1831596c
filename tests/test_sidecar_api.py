"""The sidecar under real uvicorn against real PostgreSQL: every answer the API promises."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
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


async def test_every_document_is_bounded_by_parse_timeout_seconds(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    process, url = start(database_url, tmp_path / "s.log", PARSE_TIMEOUT_SECONDS="1")
    # Text documents of 16 KB ending in unclosed markup: the standard HTML parser took 4 s
    # of CPU on each, on a thread no deadline could stop, and the server stalled meanwhile.
    small = [await add(db, b"<p>hello</p>" + b"<a " * 5_400, "text/html") for _ in range(4)]
    # Linear, but 6 MB of tags takes seconds: killed at the deadline.
    slow = await add(db, b"<a>" * 2_000_000, "text/html")
    fine = await add(db, b"<p>fine</p>", "text/html")
    try:
        process.wait_http(f"{url}/healthz")
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) as http:

            async def timed(document_id: uuid.UUID) -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                answer = await http.post(parse_path(document_id), json={"userId": "u1"})
                return answer, time.perf_counter() - started

            answers: dict[uuid.UUID, tuple[httpx.Response, float]] = {}

            async def into(document_id: uuid.UUID) -> None:
                answers[document_id] = await timed(document_id)

            async with anyio.create_task_group() as tg:
                for document_id in [*small, slow]:
                    tg.start_soon(into, document_id)
                await anyio.sleep(0.2)
                health, health_s = await timed(uuid.uuid4())  # 404, through the database
            parsed, _ = await timed(fine)
        for document_id in small:
            answer, seconds = answers[document_id]
            assert answer.status_code == 200 and seconds < 2.5, (answer.text, seconds)
            assert (await stored(db, document_id))[0][1] == "hello"
        refused, seconds = answers[slow]
        assert refused.status_code == 422 and seconds < 4, seconds
        assert refused.json()["detail"] == (
            "extracting the text took longer than PARSE_TIMEOUT_SECONDS (1 s)"
        )
        assert health.status_code == 404 and health_s < 1
        assert parsed.status_code == 200 and (await stored(db, fine))[0][1] == "fine"
        assert await stored(db, slow) == []
    finally:
        process.stop()


async def test_a_small_text_document_is_held_to_the_deadline_and_docs_are_opt_in(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    # A 16 KB text document used to be extracted on a thread, past any deadline.
    process, url = start(
        database_url, tmp_path / "s.log", PARSE_TIMEOUT_SECONDS="0.001", SIDECAR_API_DOCS="true"
    )
    document_id = await add(db, b"<b>x</b>" * 2_000, "text/html")
    try:
        process.wait_http(f"{url}/healthz")
        async with httpx.AsyncClient(base_url=url, timeout=10, headers=AUTH) as http:
            refused = await http.post(parse_path(document_id), json={"userId": "u1"})
            pages = [(await http.get(path)).status_code for path in DOCS_PAGES]
        assert refused.status_code == 422, refused.text
        assert "longer than PARSE_TIMEOUT_SECONDS (0.001 s)" in refused.json()["detail"]
        assert pages == [200, 200, 200]
    finally:
        process.stop()


DOCS_PAGES = ("/docs", "/redoc", "/openapi.json")


async def test_liveness_says_nothing_more_detail_needs_the_token_and_docs_are_off(
    client: httpx.AsyncClient,
) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (await client.get("/internal/health")).status_code == 401
    detail = await client.get("/internal/health", headers=AUTH)
    assert (detail.status_code, detail.json()) == (200, {"status": "ok"})
    for path in DOCS_PAGES:
        assert (await client.get(path)).status_code == 404, path


async def test_a_request_body_over_max_request_bytes_is_refused_before_it_is_read(
    db: AsyncEngine, client: httpx.AsyncClient, sidecar: str
) -> None:
    document_id = await add(db, b"hello")
    padded = {"userId": "u1", "padding": "x" * 70_000}  # over the default 64 KiB
    answer = await client.post(parse_path(document_id), json=padded, headers=AUTH)
    assert answer.status_code == 413, answer.text
    assert answer.json()["detail"] == "request body over MAX_REQUEST_BYTES (65536 bytes)"

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"userId": "u1", "padding": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    answer = await client.post(
        parse_path(document_id),
        content=streamed(),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert answer.status_code == 413, answer.text
    assert await stored(db, document_id) == []
    # Announcing 300 MB is enough: the answer comes before any of it is sent.
    host, port = sidecar.removeprefix("http://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(
            f"POST {parse_path(document_id)} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n\r\n".encode()
        )
        with anyio.fail_after(5):
            head = await stream.receive()
    assert head.startswith(b"HTTP/1.1 413 "), head
    # The token still comes first, and a small body is fine.
    assert (await client.post(parse_path(document_id), json=padded)).status_code == 401
    ok = await client.post(parse_path(document_id), json={"userId": "u1"}, headers=AUTH)
    assert ok.status_code == 200


async def test_an_unreachable_database_answers_503_with_retry_after(tmp_path: Path) -> None:
    process, url = start(f"postgresql://root@127.0.0.1:{free_port()}/gone", tmp_path / "s.log")
    try:
        process.wait_for_event("Application startup complete.")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            health = await http.get("/healthz")
            detail = await http.get("/internal/health", headers=AUTH)
            answer = await http.post(parse_path(uuid.uuid4()), json={"userId": "u"}, headers=AUTH)
        assert (health.status_code, health.json()) == (503, {"status": "unavailable"})
        assert detail.status_code == 503 and "database" in detail.json()["error"]
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    finally:
        process.stop()
    assert process.wait(5) == 0


def with_user(database_url: str, user: str) -> str:
    return make_url(database_url).set(username=user, password=None).render_as_string(False)


async def test_a_login_refused_or_privileges_missing_is_a_503_outage_until_mended(
    db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    role = f"sidecar_{uuid.uuid4().hex[:8]}"

    async def execute(*statements: str) -> None:
        async with db.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)

    await execute(f"CREATE ROLE {role} NOLOGIN")
    process, url = start(with_user(database_url, role), tmp_path / "s.log")
    document_id = await add(db, b"hello")

    async def answers(http: httpx.AsyncClient) -> tuple[httpx.Response, str]:
        answer = await http.post(parse_path(document_id), json={"userId": "u1"})
        return answer, (await http.get("/internal/health")).json().get("error", "")

    try:
        process.wait_for_event("Application startup complete.")
        async with httpx.AsyncClient(base_url=url, timeout=10, headers=AUTH) as http:
            nologin, nologin_why = await answers(http)
            await execute(f"ALTER ROLE {role} LOGIN")
            no_grants, no_grants_why = await answers(http)
            await execute(
                f"GRANT SELECT ON documents TO {role}",
                f"GRANT SELECT, INSERT, DELETE ON document_chunks TO {role}",
            )
            mended, _ = await answers(http)
        for answer in (nologin, no_grants):
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
            assert answer.json() == {"detail": "database unavailable, retry later"}
        assert "not permitted to log in" in nologin_why
        assert "permission denied" in no_grants_why
        assert mended.status_code == 200, mended.text
    finally:
        process.stop()
        await execute(f"REVOKE ALL ON documents, document_chunks FROM {role}", f"DROP ROLE {role}")
    assert process.events("database.unavailable")


async def test_a_missing_database_or_table_is_a_503_outage(
    database_url: str, empty_database: str, tmp_path: Path
) -> None:
    missing = make_url(database_url).set(database="no_such_db").render_as_string(False)
    started = [
        start(url, tmp_path / f"s{n}.log") for n, url in enumerate((missing, empty_database))
    ]
    try:
        for process, url in started:
            process.wait_for_event("Application startup complete.")
            async with httpx.AsyncClient(base_url=url, timeout=10, headers=AUTH) as http:
                answer = await http.post(parse_path(uuid.uuid4()), json={"userId": "u1"})
                why = (await http.get("/internal/health")).json()["error"]
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
            assert "does not exist" in why, why
    finally:
        for process, _ in started:
            process.stop()


def test_bad_settings_stop_start_up_naming_them(database_url: str) -> None:
    from tests.workerproc import run_to_exit

    code, stderr = run_to_exit(
        "sidecar",
        {"DATABASE_URL": database_url, "SIDECAR_TOKEN": "t0ken-long", "CHUNK_OVERLAP": "1000"},
    )
    assert code == 2 and "CHUNK_OVERLAP must be below CHUNK_SIZE (1000 >= 1000)" in stderr
    code, stderr = run_to_exit("sidecar", {"DATABASE_URL": database_url})
    assert code == 2 and "SIDECAR_TOKEN: required, not set" in stderr
