"""``python -m reliability.chaos`` (``make chaos``): deliver through faults, then check.

Starts a throwaway PostgreSQL with production durability and a throwaway Redis, the sidecar
(behind a proxy that can fail on demand), 3 chat workers (``ORDERING=key``, room mode) and
2 document workers. Producers commit chat messages over many rooms and documents, a tenth of
their transactions rolled back, while a subscriber records what arrives. Along a timeline
drawn from ``--seed`` (reliability.schedule) it SIGKILLs workers mid-batch and starts new
ones, stops Redis for 10 s, restarts PostgreSQL (fast, then immediate shutdown), cuts a
worker's connections, makes the sidecar answer 500, hang and refuse connections, bursts
5,000 rows in one transaction and commits poison. Then it drains and checks
(reliability.verdict): nothing committed lost, nothing rolled back sent, per-room positions
never going back, documents in the right state, nothing stuck.

Exit codes: 0 all checks passed; 1 a check failed (the report says which); 2 bad options.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from anyio.from_thread import BlockingPortal, start_blocking_portal

from devservers import start_throwaway, stop_throwaway, throwaway_postgres, throwaway_redis
from outbox.storage.migrate import upgrade
from reliability.fleet import Fleet, WorkerSlot
from reliability.options import at_least
from reliability.run import TrafficRun
from reliability.schedule import Event, plan
from reliability.traffic import settle_unknown
from reliability.verdict import FaultWindow, Report, judge

__all__ = ["main"]

log = logging.getLogger("reliability.chaos")

KILL_WAIT_SECONDS = 2.0
"""How long a kill waits for its worker to hold rows, so that it dies mid-batch."""


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="chaos: %(message)s", stream=sys.stdout)
    for noisy in ("httpx", "alembic", "outbox.devservers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log_dir = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
    log.info(
        "seed %d, %g s of faults; the processes' logs are in %s",
        options.seed,
        options.seconds,
        log_dir,
    )
    report = _run(options, log_dir)
    print("\n".join(report.lines), flush=True)
    verdict = "PASS" if report.ok else f"FAIL ({len(report.problems)} checks failed)"
    print(f"chaos: seed {options.seed}: {verdict}", flush=True)
    if report.ok and not options.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if report.ok else 1


def _run(options: argparse.Namespace, log_dir: Path) -> Report:
    with throwaway_postgres(durable=True) as database_url, throwaway_redis() as redis_url:
        upgrade(database_url, documents=True)
        fleet = Fleet(database_url, redis_url, log_dir)
        try:
            fleet.start(chat_workers=3, document_workers=2, chat_env={"LOCK_SECONDS": "5"})
            with start_blocking_portal() as portal:
                return _conduct(options, portal, fleet, database_url, redis_url)
        finally:
            fleet.stop()


def _conduct(
    options: argparse.Namespace,
    portal: BlockingPortal,
    fleet: Fleet,
    database_url: str,
    redis_url: str,
) -> Report:
    traffic = TrafficRun(database_url, redis_url, options.seed, options.rooms)
    bursts = 6
    committed_bursts = bursts - 1  # one rolls back
    in_bursts = committed_bursts * options.burst_rows
    steady_share = max(0.2 * options.messages, options.messages - in_bursts)
    steady = steady_share / 0.9 / options.seconds  # a tenth of the transactions roll back
    future, _ = portal.start_task(
        traffic.run, steady, options.messages, options.documents / options.seconds, 0.05
    )
    log.info("server: %s", portal.call(traffic.settings))
    events = plan(options.seed, options.seconds, kills=options.kills, bursts=bursts, poison_waves=4)
    conductor = _Conductor(portal, fleet, traffic, database_url, redis_url, options.burst_rows)
    conductor.play(events, rollback_burst=options.seed % bursts)
    log.info("producing ends; draining")
    traffic.producing = False
    _wait(lambda: traffic.lanes_running == 0 and conductor.tasks_done(), 300, "producers")
    drained = _drain(portal, traffic, options.drain_seconds)
    time.sleep(2.0)  # the last publishes reach the subscriber
    settled = portal.call(settle_unknown, traffic.engine, traffic.ledger)
    facts = portal.call(traffic.facts)
    portal.call(traffic.finish)
    future.result(30)
    report = judge(traffic.ledger, facts, conductor.windows)
    ledger = traffic.ledger
    report.lines[:0] = [
        f"seed {options.seed}; {ledger.transactions:,} transactions"
        f" ({ledger.rolled_back_on_purpose:,} rolled back on purpose,"
        f" {ledger.broken_transactions:,} broken by a fault; commits of unknown outcome"
        f" settled from the database: {settled[0]} committed, {settled[1]} not),"
        f" {ledger.bursts} bursts of {options.burst_rows:,}; drained in {drained}",
        f"kills: {len(conductor.kills)} SIGKILLs, rows the killed worker held:"
        f" {', '.join(str(n) for n in conductor.kills)}",
    ]
    crashed = fleet.exited()
    if crashed:
        report.problem(f"processes exited on their own: {crashed}")
    return report


class _Conductor:
    """Plays the timeline: each event at its time, from the main thread."""

    def __init__(
        self,
        portal: BlockingPortal,
        fleet: Fleet,
        traffic: TrafficRun,
        database_url: str,
        redis_url: str,
        burst_rows: int,
    ) -> None:
        self.portal, self.fleet, self.traffic = portal, fleet, traffic
        self.burst_rows = burst_rows
        self.database_url, self.redis_url = database_url, redis_url
        self.windows: list[FaultWindow] = []
        self.kills: list[int] = []
        self._tasks: list[Future[None]] = []
        self._open: dict[str, float] = {}

    def play(self, events: list[Event], *, rollback_burst: int) -> None:
        start = self.traffic.ledger.subscribed_at or time.time()
        queue = list(events)
        heapq.heapify(queue)
        while queue:
            event = heapq.heappop(queue)
            time.sleep(max(0.0, start + event.at - time.time()))
            ending = self._do(event, rollback_burst)
            if ending is not None:
                heapq.heappush(queue, Event(event.at + event.seconds, ending))

    def tasks_done(self) -> bool:
        return all(task.done() for task in self._tasks)

    def _do(self, event: Event, rollback_burst: int) -> str | None:
        """Carry out ``event``; name the event that ends it, if it has an end."""
        what, now = event.what, time.time()
        log.info("%6.1f s  %s", event.at, what)
        if what == "kill":
            self._kill(event.target)
        elif what == "burst":
            rollback = event.target == rollback_burst
            self._tasks.append(
                self.portal.start_task_soon(self.traffic.burst, self.burst_rows, rollback)
            )
        elif what == "poison":
            self._tasks.append(self.portal.start_task_soon(self.traffic.poison, 5))
        elif what == "redis-down":
            stop_throwaway(self.redis_url)
            self._open["redis-down"] = now
            return "redis-up"
        elif what == "redis-up":
            start_throwaway(self.redis_url)
            self._close("redis-down")
        elif what.startswith("postgres-restart"):
            stop_throwaway(self.database_url, immediate=what.endswith("immediate"))
            time.sleep(1.0)
            start_throwaway(self.database_url)
            self.windows.append(FaultWindow(what, now, time.time()))
        elif what == "terminate-connections":
            slot = self.fleet.chat_slots()[event.target % len(self.fleet.chat_slots())]
            cut = self.portal.call(self.traffic.terminate, slot.worker_id)
            self.windows.append(FaultWindow(what, now, now, f"{cut} of {slot.worker_id}'s"))
        elif what == "sidecar-ok":
            assert self.fleet.proxy is not None
            mode = self.fleet.proxy.mode
            self.fleet.proxy.set_mode("pass")
            self._close("sidecar", f"sidecar-{mode}")
        elif what.startswith("sidecar-"):
            assert self.fleet.proxy is not None
            self.fleet.proxy.set_mode(what.removeprefix("sidecar-"))  # type: ignore[arg-type]
            self._open["sidecar"] = now
            return "sidecar-ok"
        return None

    def _close(self, key: str, name: str | None = None) -> None:
        self.windows.append(FaultWindow(name or key, self._open.pop(key), time.time()))

    def _kill(self, target: int) -> None:
        """SIGKILL a worker once it holds rows (waiting up to KILL_WAIT_SECONDS); replace it."""
        slots = self.fleet.slots
        slot: WorkerSlot = slots[target % len(slots)]
        deadline, held = time.monotonic() + KILL_WAIT_SECONDS, 0
        while time.monotonic() < deadline:
            try:
                held = self.portal.call(self.traffic.rows_held, slot.worker_id)
            except Exception:  # the database may be down: kill all the same
                break
            if held:
                break
            time.sleep(0.01)
        killed = slot.worker_id
        now = time.time()
        self.fleet.kill_and_replace(slot)
        self.kills.append(held)
        self.windows.append(FaultWindow("kill", now, now, f"{killed} holding {held} rows"))


def _drain(portal: BlockingPortal, traffic: TrafficRun, limit: float) -> str:
    """Wait until no row is pending or in progress (seen twice, a second apart)."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < limit:
        try:
            quiet = quiet + 1 if portal.call(traffic.open_rows) == 0 else 0
        except Exception:
            quiet = 0
        if quiet >= 2:
            return f"{time.monotonic() - started:.1f} s"
        time.sleep(1.0)
    return f"not within {limit:g} s"


def _wait(condition: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            log.warning("%s still running after %g s", what, limit)
            return
        time.sleep(0.2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reliability.chaos",
        description="Deliver through crashes and outages, then check nothing was lost.",
        epilog="Exit codes: 0 passed, 1 a check failed, 2 bad options.",
    )
    add = parser.add_argument
    add("--seed", type=int, default=16, help="draws the fault timeline (16)")
    add(
        "--seconds",
        type=at_least(float, 30),
        default=180.0,
        help="how long faults and producing last (180)",
    )
    add(
        "--messages",
        type=at_least(int, 1),
        default=50_000,
        help="chat messages to commit at least (50,000)",
    )
    add("--rooms", type=at_least(int, 1), default=500, help="chat rooms (500)")
    add("--documents", type=at_least(int, 1), default=2_000, help="documents to write (2,000)")
    add("--kills", type=at_least(int, 0), default=12, help="workers to SIGKILL (12)")
    add(
        "--burst-rows",
        type=at_least(int, 1),
        default=5_000,
        help="rows of each of the 6 bursts (5,000)",
    )
    add(
        "--drain-seconds",
        type=at_least(float, 1),
        default=300.0,
        help="longest wait at the end (300)",
    )
    add("--keep-logs", action="store_true", help="keep the processes' logs even on a pass")
    return parser


if __name__ == "__main__":
    sys.exit(main())
