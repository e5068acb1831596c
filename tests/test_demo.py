"""``python -m demo`` end to end: the real stack, real servers, a real Ctrl-C.

Every descendant of a demo run carries a marker in its environment, so a test can prove
that nothing the demo started (workers, sidecar, parsing processes, throwaway servers) is
still running afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from demo.report import Rates
from devservers import LocalServices
from outbox.primitives.urls import libpq_dsn
from tests.conftest import admin

ROOT = Path(__file__).resolve().parent.parent


def demo_env(services: LocalServices | None, **extra: str) -> dict[str, str]:
    """The environment of a demo run: the test servers (or none), and a fresh marker."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    if services is not None:
        env |= {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    return env | {"OUTBOX_DEMO_TEST_MARKER": uuid.uuid4().hex} | extra


def still_running(env: dict[str, str]) -> list[int]:
    """Pids of live processes whose environment has this run's marker."""
    marker = f"OUTBOX_DEMO_TEST_MARKER={env['OUTBOX_DEMO_TEST_MARKER']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return found


def demo_databases(services: LocalServices) -> set[str]:
    async def names() -> set[str]:
        conn = await asyncpg.connect(libpq_dsn(services.database_url))
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database")
        finally:
            await conn.close()
        return {row[0] for row in rows if row[0].startswith("outbox_demo_")}

    return asyncio.run(names())


def run_demo(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


class DemoProcess:
    """A demo started in its own process group (as a terminal runs a job), its output
    read line by line."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "demo", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def read_until(self, seen: Callable[[list[str]], bool], within: float = 90) -> None:
        """Read lines until ``seen(lines so far)``; fail if the output ends or time runs out."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        while not (self.lines and seen(self.lines)):
            line = self.process.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(self.lines)
            self.lines.append(line)

    def signal(self, sig: signal.Signals) -> None:
        """What a terminal does: ``sig`` to the whole foreground process group."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(self.process.pid, sig)

    def finish(self) -> tuple[int, str]:
        """Wait for the exit; its code and the whole output."""
        rest, _ = self.process.communicate(timeout=60)
        return self.process.returncode, "".join(self.lines) + rest


@contextlib.contextmanager
def running_demo(env: dict[str, str], *args: str) -> Iterator[DemoProcess]:
    demo = DemoProcess(env, args)
    try:
        yield demo
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()


@pytest.fixture
def summary_path(tmp_path: Path) -> Path:
    return tmp_path / "summary.json"


def test_the_whole_flow_delivers_everything_and_leaves_nothing(
    services: LocalServices, summary_path: Path
) -> None:
    env = demo_env(services)
    before = demo_databases(services)
    code, out = run_demo(
        env,
        *("--seconds", "2", "--chat-rate", "100", "--document-rate", "10"),
        *("--unreadable-every", "4", "--summary-json", str(summary_path)),
    )
    assert code == 0, out
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert 100 <= summary["chat_sent"] <= 220
    assert summary["chat_delivered"] == summary["chat_sent"]
    assert summary["chat_missing"] == []
    sent = summary["documents_sent"]
    assert 10 <= sent <= 25
    assert summary["documents_unreadable"] == sent // 4  # the 4th, 8th, ... document
    assert summary["documents_failed"] == sent // 4
    assert summary["documents_processed"] == sent - sent // 4
    assert summary["documents_unfinished"] == []
    assert summary["documents_wrong"] == []
    assert "unsupported content type 'image/png'" in summary["dead_example"]
    assert summary["chat_lag_p50_ms"] > 0
    assert summary["document_lag_p99_ms"] >= summary["document_lag_p50_ms"] > 0
    # The live view printed samples, then the summary with its verdict.
    assert len(re.findall(r"^\s+chat\s+sent", out, flags=re.MULTILINE)) >= 2, out
    assert "Summary after" in out and "OK: every chat message was delivered" in out
    # The rates asked for and reached.
    assert summary["chat_rate_asked"] == 100 and summary["document_rate_asked"] == 10
    committed = summary["chat_sent"] / summary["rate_seconds"]
    assert abs(summary["chat_rate_committed"] - committed) < 0.1, summary
    assert ("RATE NOT HELD" in out) is (not summary["rate_held"]), out
    # Nothing left: processes, the demo's database, its logs.
    assert still_running(env) == []
    assert demo_databases(services) == before
    log_dir = re.search(r"logs are in (\S+)", out)
    assert log_dir is not None and not Path(log_dir.group(1)).exists()


def test_ctrl_c_on_a_bare_machine_stops_everything_it_started(summary_path: Path) -> None:
    """No DATABASE_URL / REDIS_URL: throwaway servers; then a terminal's Ctrl-C (SIGINT to
    the whole foreground process group) mid-run."""
    env = demo_env(None)
    with running_demo(env, "--seconds", "120", "--summary-json", str(summary_path)) as demo:
        demo.read_until(lambda lines: sum("producing (Ctrl-C stops)" in x for x in lines) >= 2)
        assert still_running(env) != []
        demo.signal(signal.SIGINT)
        code, out = demo.finish()
    assert code == 0, out
    assert "started throwaway" in out and "stopped throwaway PostgreSQL" in out, out
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["seconds"] < 60  # stopped early, not at the end of its 120 s
    assert summary["chat_delivered"] == summary["chat_sent"] > 0
    assert still_running(env) == []


def test_sigterm_then_ctrl_c_during_start_up_leave_nothing_behind(services: LocalServices) -> None:
    """A SIGTERM while the stack starts unwinds start-up; a Ctrl-C during that clean-up
    only says that the demo is stopping, and cannot cut it short."""
    env = demo_env(services)
    before = demo_databases(services)
    with running_demo(env, "--seconds", "30") as demo:
        demo.read_until(lambda lines: "starting the sidecar and both workers" in lines[-1])
        demo.signal(signal.SIGTERM)
        time.sleep(0.3)
        demo.signal(signal.SIGINT)  # during the clean-up (or after it: then it is a no-op)
        code, out = demo.finish()
    assert code == 130, out
    assert "interrupted before the flow began; everything started is stopped" in out
    assert still_running(env) == []
    assert demo_databases(services) == before
    log_dir = re.search(r"logs are in (\S+)", out)
    assert log_dir is not None and not Path(log_dir.group(1)).exists()


def test_a_reader_that_goes_away_stops_nothing_short(
    services: LocalServices, summary_path: Path
) -> None:
    """``python -m demo | head -1``: once the pipe is closed every write fails; the run, its
    summary file and the clean-up go on."""
    env = demo_env(services)
    before = demo_databases(services)
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo", "--seconds", "2", "--summary-json", str(summary_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert demo.stdout is not None and demo.stderr is not None
    assert demo.stdout.readline().startswith(b"demo: run ")
    demo.stdout.close()
    try:
        assert demo.wait(timeout=90) == 0
        assert demo.stderr.read() == b""  # no tracebacks either
    finally:
        demo.kill()
        demo.stderr.close()
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True and summary["chat_delivered"] == summary["chat_sent"] > 0
    assert still_running(env) == []
    assert demo_databases(services) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "0"], "--seconds: '0': must be a number above 0"),
        (["--chat-rate", "nan"], "--chat-rate: 'nan': must be a number 0 or more"),
        (["--chat-rate", "0", "--document-rate", "0"], "both 0: nothing would flow"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    code, out = run_demo(demo_env(None), *args, timeout=30)
    assert code == 2
    assert message in out


def test_a_worker_that_cannot_start_is_reported_and_everything_stops(
    services: LocalServices,
) -> None:
    # A setting the document worker refuses: its timeout must stay below the handler's.
    env = demo_env(services, SIDECAR_TIMEOUT_SECONDS="1000")
    before = demo_databases(services)
    code, out = run_demo(env, "--seconds", "2")
    assert code == 3, out
    assert "could not start: document-worker exited with 2" in out
    assert "SIDECAR_TIMEOUT_SECONDS" in out
    assert still_running(env) == []
    assert demo_databases(services) == before


@pytest.fixture
def role_without_createdb(services: LocalServices) -> Iterator[str]:
    role = f"demo_{uuid.uuid4().hex[:8]}"
    admin(services.database_url, f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        url = make_url(services.database_url).set(username=role, password=None)
        yield url.render_as_string(hide_password=False)
    finally:
        admin(services.database_url, f'DROP ROLE "{role}"')


def test_a_server_that_refuses_create_database_is_explained(
    services: LocalServices, role_without_createdb: str
) -> None:
    env = demo_env(services) | {"DATABASE_URL": role_without_createdb}
    code, out = run_demo(env, "--seconds", "1", timeout=60)
    assert code == 3, out
    assert "may not create one" in out and "unset DATABASE_URL" in out
    assert still_running(env) == []


def test_the_summary_says_when_the_rate_asked_for_was_not_held() -> None:
    """Correct but slow is not "OK" alone: the summary names the rate it reached."""
    slow = Rates(60, 1000, 600, 580, 10, 10)
    assert not slow.held
    assert any(line.startswith("RATE NOT HELD") for line in slow.lines())
    assert "committed 600 chat/s (delivered 580/s" in slow.lines()[0]
    behind = Rates(60, 1000, 1000, 700, 10, 10)  # committed, but delivery fell behind
    assert not behind.held
    held = Rates(60, 1000, 990, 985, 10, 9.6)
    assert held.held and not any("NOT HELD" in line for line in held.lines())
    assert held.as_json()["rate_held"] is True
