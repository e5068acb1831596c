"""The chaos and soak runs (opt-in: ``pytest -m chaos``, ``pytest -m soak``), and the fast
checks of their parts: the fault timeline, the verdict and the failing proxy."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from devservers import free_ports
from reliability.faultproxy import FaultProxy
from reliability.ledger import Arrival, Ledger
from reliability.schedule import WINDOWED, plan
from reliability.verdict import Facts, judge
from tests.workerproc import ROOT


def test_the_timeline_is_drawn_from_the_seed_and_windowed_faults_never_overlap() -> None:
    events = plan(16, 180, kills=12, bursts=6, poison_waves=4)
    assert events == plan(16, 180, kills=12, bursts=6, poison_waves=4)
    assert events != plan(17, 180, kills=12, bursts=6, poison_waves=4)
    kinds = [e.what for e in events]
    assert (kinds.count("kill"), kinds.count("burst"), kinds.count("poison")) == (12, 6, 4)
    windows = sorted((e.at, e.at + e.seconds) for e in events if e.what in WINDOWED)
    assert len(windows) == len(WINDOWED)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(windows))
    assert all(e.at >= 18 and e.at + e.seconds <= 162 for e in events if e.what in WINDOWED)
    short = [e for e in plan(1, 40, kills=1, bursts=1, poison_waves=1) if e.what in WINDOWED]
    assert all(0 < e.seconds < 10 for e in short)


def _facts(rows: dict[int, tuple[str, float | None]]) -> Facts:
    return Facts(
        rows={i: ("message.created", status, at, None) for i, (status, at) in rows.items()},
        documents={},
    )


def test_the_verdict_tells_pubsub_drops_from_losses_and_catches_reordering() -> None:
    ledger = Ledger(subscribed_at=1000.0)
    for outbox_id in (1, 2, 3, 4, 5):
        ledger.chat[outbox_id] = ("r", 1000.0 + outbox_id)
    ledger.rolled_back = {9}
    ledger.subscriber_gaps = [(1020.0, 1025.0)]
    ledger.arrivals = [
        Arrival(1001.1, 1, "r", 10),
        Arrival(1002.1, 2, "r", 11),
        Arrival(1002.2, 1, "r", 10),  # a redelivery: aside
    ]
    facts = _facts(
        {1: ("published", 1001.0), 2: ("published", 1002.0), 3: ("published", 1024.0),
         4: ("published", 1040.0), 5: ("pending", None)}
    )  # fmt: skip
    report = judge(ledger, facts, [])
    assert [p.split(":")[0] for p in report.problems] == [
        "1 committed chat messages not published",  # 5
        "1 chat messages marked published never reached the subscriber while it was subscribed",
        "1 rows still pending or in progress after the drain",
    ]
    assert "ids [4]" in report.problems[1]
    assert any("1 published while it was reconnecting" in line for line in report.lines)

    ledger.arrivals += [Arrival(1003.0, 4, "r", 11), Arrival(1003.1, 9, "r", 12)]
    report = judge(ledger, facts, [])
    assert any(p.startswith("1 out-of-order deliveries") for p in report.problems)
    assert any(p.startswith("1 rolled-back messages delivered") for p in report.problems)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def test_the_fault_proxy_passes_fails_hangs_and_refuses_on_demand() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (port,) = free_ports(1)
    proxy = FaultProxy(port, server.server_address[1])
    proxy.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client(timeout=1.0) as client:  # keeps its connection alive
            assert client.get(url).text == "hello"
            proxy.set_mode("error")
            assert client.get(url).status_code == 500
            proxy.set_mode("hang")
            with pytest.raises(httpx.ReadTimeout):
                client.get(url)
            proxy.set_mode("refuse")
            with pytest.raises(httpx.ConnectError):
                client.get(url)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            proxy.set_mode("pass")
            assert client.get(url).text == "hello"
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()


def _run(module: str, *args: str, limit: float) -> str:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    print(done.stdout[-6000:], f"\n({time.monotonic() - started:.0f} s)")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.chaos
@pytest.mark.timeout(1500)
def test_chaos_run_passes() -> None:
    """The default chaos run (about 3 minutes of faults, then the drain and the checks)."""
    assert "PASS" in _run("reliability.chaos", limit=1400)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_run_stays_steady() -> None:
    """A short soak (5 minutes at 500 msg/s); ``make soak`` runs the full 30 minutes."""
    assert "soak: PASS" in _run(
        "reliability.soak", "--minutes", "5", "--rate", "500", "--retain", "1m", limit=800
    )


@pytest.mark.parametrize(
    ("module", "args", "reason"),
    [
        ("reliability.chaos", ["--seconds", "10"], "--seconds: '10': must be at least 30"),
        ("reliability.chaos", ["--documents", "0"], "--documents: '0': must be at least 1"),
        ("reliability.soak", ["--retain", "2x"], "--retain: '2x' is not a duration"),
        ("reliability.soak", ["--rate", "abc"], "--rate: 'abc' is not a number"),
    ],
)
def test_bad_options_exit_2_with_the_reason(module: str, args: list[str], reason: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert reason in done.stderr
