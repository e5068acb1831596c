"""``python -m demo`` (or ``make demo``): the whole flow on this machine, then a summary.

Uses ``DATABASE_URL`` / ``REDIS_URL`` when they answer, else starts throwaway servers;
creates and migrates a database of its own; starts the sidecar and both workers; commits
chat messages and documents while a subscriber listens; shows progress; drains; stops
everything it started and drops its database.

Exit codes: ``0`` everything committed was delivered or dead-lettered as expected; ``1``
something was not (the summary says what), or a process died; ``2`` a bad option; ``3``
something could not start (the message says what); ``130`` Ctrl-C before the flow began.
Ctrl-C during the flow stops producing, drains, and ends with the summary as usual.

Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed) all mean "stop" (see
``demo.stopping``). Before the flow, start-up stops at its next step and unwinds; during
it, producing stops; no signal ever cuts a clean-up short.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import anyio

from demo.database import CannotCreateDatabase, demo_database
from demo.flow import Traffic, run_traffic
from demo.report import Summary, show
from demo.stack import StartFailed, running_stack
from demo.stopping import StopFlag, StopRequested
from devservers import local_services
from outbox.primitives.urls import redacted_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANNOT_START, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)  # exits 2 on a bad option
    if options.chat_rate == 0 and options.document_rate == 0:
        parser.error("--chat-rate and --document-rate are both 0: nothing would flow")
    traffic = Traffic(
        seconds=options.seconds,
        chat_rate=options.chat_rate,
        document_rate=options.document_rate,
        rooms=options.rooms,
        unreadable_every=options.unreadable_every,
        drain_timeout=options.drain_timeout,
    )
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s", stream=sys.stdout)
    logging.raiseExceptions = False  # a gone terminal (see report.show) is no error to print
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = StopFlag()
    stop.install()
    run_id = secrets.token_hex(4)
    log_dir = Path(tempfile.mkdtemp(prefix=f"outbox-demo-{run_id}-"))
    say(f"run {run_id}; the processes' logs are in {log_dir}")
    try:
        summary, crashed = _run(traffic, run_id, log_dir, stop, keep=options.keep)
    except StopRequested:
        if not options.keep:
            shutil.rmtree(log_dir, ignore_errors=True)
        say("interrupted before the flow began; everything started is stopped")
        return EXIT_INTERRUPTED
    except (StartFailed, CannotCreateDatabase) as exc:
        say(f"could not start: {exc}")
        return EXIT_CANNOT_START
    show("\n".join(summary.lines()))
    if crashed:
        say(f"a process died during the run: {crashed}")
    if options.summary_json:
        options.summary_json.write_text(json.dumps(summary.as_json(), indent=2) + "\n")
    ok = summary.ok and not crashed
    if ok and not options.keep:
        shutil.rmtree(log_dir, ignore_errors=True)
    return EXIT_OK if ok else EXIT_FAILED


def _run(
    traffic: Traffic, run_id: str, log_dir: Path, stop: StopFlag, *, keep: bool
) -> tuple[Summary, str | None]:
    """Start everything, run the flow, stop everything; :class:`StopRequested` if a stop
    signal came before the flow began (after everything started is stopped)."""
    with local_services() as services:
        stop.check()
        # A throwaway server goes with everything on it; a kept database needs a real one.
        drop = not (keep or services.throwaway_postgres)
        with demo_database(services.database_url, drop=drop) as database_url:
            stop.check()
            say(f"migrated {redacted_url(database_url)}; starting the sidecar and both workers")
            redis_url = services.redis_url
            with running_stack(database_url, redis_url, log_dir, stop.check) as stack:
                pids = ", ".join(f"{c.name} {c.process.pid}" for c in stack.children)
                say(f"ready ({pids}); producing for {traffic.seconds:g} s, Ctrl-C stops early")
                outcome = anyio.run(
                    run_traffic, traffic, database_url, redis_url, stack, run_id, stop
                )
                say("stopping the workers (they finish what they hold), then the sidecar")
            if keep and not services.throwaway_postgres:
                say(f"kept the demo database: DATABASE_URL={redacted_url(database_url)}")
        if services.throwaway_postgres or services.throwaway_redis:
            say("stopping the throwaway servers")
    return outcome


def say(line: str) -> None:
    show(f"demo: {line}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run the outbox end to end on this machine and report what happened.",
        epilog="Exit codes: 0 all delivered as expected, 1 not (the summary says what), "
        "2 bad option, 3 could not start, 130 interrupted before the flow began.",
    )
    add = parser.add_argument
    add("--seconds", type=_number(float, 0), default=20.0, help="how long to produce (20)")
    add("--chat-rate", type=_number(float), default=200.0, help="chat messages per second (200)")
    add("--document-rate", type=_number(float), default=10.0, help="documents per second (10)")
    add("--rooms", type=_number(int, 0), default=8, help="chat rooms (8)")
    add(
        "--unreadable-every",
        type=_number(int),
        default=20,
        metavar="N",
        help="make every Nth document an unreadable PNG, to show dead-lettering (0: none; 20)",
    )
    add("--drain-timeout", type=_number(float, 0), default=30.0, help="wait at the end (30 s)")
    add("--keep", action="store_true", help="keep the logs, and the demo database on a real server")
    add("--summary-json", type=Path, metavar="PATH", help="also write the summary here as JSON")
    return parser


def _number(kind: Callable[[str], float], above: float | None = None) -> Callable[[str], float]:
    """An argparse type: a ``kind`` number, above ``above`` if given, else 0 or more."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0 or (above is not None and value <= above):
            limit = f"above {above:g}" if above is not None else "0 or more"
            raise argparse.ArgumentTypeError(f"{text!r}: must be a number {limit}")
        return value

    return parse


if __name__ == "__main__":
    try:
        code = main()
    finally:
        StopFlag().ignore_from_now_on()
    sys.exit(code)
