"""``outbox dashboard`` in a real browser: Debian's chromium driven by Playwright.

A real uvicorn (``python -m outbox.cli dashboard``) on a free port, a real chat worker
process, a real database and Redis. The browser is the system's ``chromium``: Playwright
never downloads one. Without it the module is skipped locally and fails under CI
(``CI=true``), where ``.ci/run`` installs it. The two screenshots of the README are taken
here, into ``docs/images/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devservers import LocalServices, free_port
from outbox.primitives.urls import libpq_dsn
from tests.workerproc import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
TOKEN = "test-dashboard-token-0123456789"
XSS = "<script>window.__pwned = 1; alert(1)</script>"

pytestmark = pytest.mark.timeout(90)


def _chromium() -> str:
    found = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        reason = "needs Debian's chromium and the playwright package (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    return found


def sql(database_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def dashboard(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The dashboard served by the CLI, as a subprocess; its base URL."""
    sql(database_url, "TRUNCATE outbox, outbox_audit RESTART IDENTITY")
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": database_url,
            "DASHBOARD_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
        },
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        logged = (tmp_path / "dashboard.log").read_text()
        assert TOKEN not in logged and "__pwned" not in logged, logged  # no secret, no payload


@pytest.fixture
def chat_worker(
    database_url: str, services: LocalServices, tmp_path: Path
) -> Iterator[Callable[[], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": services.redis_url,
            "WORKER_ID": "chat-ui-test",
            "POLL_INTERVAL_MS": "200",
            "SHUTDOWN_GRACE_SECONDS": "2",
        }
        worker = WorkerProcess("workers.chat", env, tmp_path / "chat.log")
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_operate_the_outbox_from_a_browser(
    dashboard: str, database_url: str, chat_worker: Callable[[], WorkerProcess]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    insert = (
        "INSERT INTO outbox (type, key, payload, status, error, attempts)"
        " SELECT %s, %s, %s::jsonb, %s, %s, %s FROM generate_series(1, %s)"
    )
    sql(
        database_url,
        insert,
        "document.preprocess.v1",
        "doc-7",
        '{"documentId": 7}',
        "pending",
        None,
        0,
        3,
    )
    (dead_id,) = sql(
        database_url,
        "INSERT INTO outbox (type, key, payload, status, error, attempts)"
        " VALUES ('message.created', 'room-<i>', %s::jsonb, 'dead', %s, 10) RETURNING id",
        f'{{"text": "{XSS}", "note": "an operator must see this as text"}}',
        "Redis refused the publish: <b>NOPERM</b> this user has no permissions",
    )[0]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 720})
            page = context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            # -- the overview follows the table without a reload --------------------------
            page.goto(dashboard + "/")
            expect(page.locator("#total-pending")).to_have_text("3")
            expect(page.locator("#total-dead")).to_have_text("1")
            sql(
                database_url,
                insert,
                "message.created",
                "room-1",
                '{"text": "hi"}',
                "pending",
                None,
                0,
                40,
            )
            expect(page.locator("#total-pending")).to_have_text("43", timeout=8000)
            chat_worker()  # delivers the 40 chat rows; the documents stay pending
            expect(page.locator("#total-pending")).to_have_text("3", timeout=15000)
            expect(page.locator("#prefixes")).to_contain_text("document.")
            sql(
                database_url,
                insert,
                "room.updated",
                "room-2",
                '{"title": "x"}',
                "pending",
                None,
                0,
                60,
            )
            expect(page.locator("#prefixes")).to_contain_text("room.", timeout=8000)
            expect(page.locator("#total-pending")).to_have_text("3", timeout=15000)
            expect(page.locator("#chart-peak")).not_to_have_text("0.0", timeout=8000)
            page.screenshot(path=str(IMAGES / "dashboard-overview.png"))

            # -- a change without the token (no session) or without CSRF is refused --------
            anonymous = browser.new_context()
            refused = anonymous.request.post(
                dashboard + "/dead/apply", form={"action": "purge", "scope": "matching"}
            )
            assert refused.status == 401, refused.status
            anonymous.close()

            page.goto(dashboard + "/login")
            page.fill("input[name=token]", TOKEN)
            page.fill("input[name=name]", "test-operator")
            page.click("form.login button")
            expect(page.locator("header .who")).to_contain_text("test-operator")
            no_csrf = context.request.post(
                dashboard + "/dead/apply", form={"action": "purge", "scope": "matching"}
            )
            assert no_csrf.status in (401, 403), no_csrf.status
            wrong_csrf = context.request.post(
                dashboard + "/dead/apply",
                form={"action": "purge", "scope": "matching", "csrf": "0" * 64},
            )
            assert wrong_csrf.status == 403, wrong_csrf.status
            assert sql(database_url, "SELECT status FROM outbox WHERE id = %s", dead_id) == [
                ("dead",)
            ]

            # -- the dead letter, shown as text, retried and delivered ---------------------
            page.goto(dashboard + "/dead?error=noperm")
            expect(page.locator("#matching")).to_have_text("1")
            expect(page.locator("table.dead")).to_contain_text("<b>NOPERM</b>")
            page.click(f"a[href='/messages/{dead_id}']")
            expect(page.locator("#status")).to_have_text("dead")
            expect(page.locator("#payload")).to_contain_text(XSS)
            assert page.locator("#payload script, #error b").count() == 0
            assert page.evaluate("window.__pwned === undefined")
            page.screenshot(path=str(IMAGES / "dashboard-dead-message.png"))

            page.click("#retry")
            assert page.locator("#reason").count() == 0, page.locator("#reason").inner_text()
            expect(page.locator("h1")).to_have_text("Retry 1 dead message?")
            page.click("#confirm")
            expect(page.locator("#done")).to_have_text("Retried 1 message.")
            page.click("#back")
            deadline = time.monotonic() + 15
            while page.locator("#status").inner_text() != "published":
                assert page.locator("#status").inner_text() in ("pending", "in_progress")
                assert time.monotonic() < deadline, "the retried message was not delivered"
                page.wait_for_timeout(200)
                page.reload()
            assert dialogs == []
        finally:
            browser.close()

    audit = sql(database_url, "SELECT actor, action, rows_affected, selection FROM outbox_audit")
    assert len(audit) == 1
    actor, action, rows, selection = audit[0]
    assert (actor, action, rows, selection) == (
        "dashboard:test-operator@127.0.0.1",
        "retry",
        1,
        {"ids": [dead_id]},
    )
