"""Process entry point shared by every worker: settings, logging, signals, exit codes.

Exit codes scripts can rely on: ``0`` stopped cleanly (SIGTERM/SIGINT), ``2`` a bad or
missing setting (the message names the variable), ``3`` a dependency still unreachable
when ``STARTUP_TIMEOUT_SECONDS`` ran out (the message names it), ``1`` anything unexpected.
A second SIGTERM/SIGINT ends the grace period at once.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import anyio

from outbox.primitives.errors import ConfigurationError, StartupError
from outbox.primitives.logs import configure_logging, log_event
from outbox.runtime.handler import Handler
from outbox.runtime.settings import WorkerSettings, load_settings
from outbox.runtime.worker import Worker

__all__ = ["EXIT_BAD_SETTINGS", "EXIT_UNREACHABLE", "run_worker_process"]

EXIT_BAD_SETTINGS = 2
EXIT_UNREACHABLE = 3

log = logging.getLogger("outbox.worker")

S = TypeVar("S", bound=WorkerSettings)


def run_worker_process(
    program: str, settings_type: type[S], make_handler: Callable[[S], Handler]
) -> NoReturn:
    """Load ``settings_type`` from the environment, run a :class:`Worker`, exit."""
    try:
        settings = load_settings(settings_type)
        handler = make_handler(settings)
    except ConfigurationError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    configure_logging(settings.log_level, settings.log_format)
    try:
        anyio.run(_serve, handler, settings)
    except* StartupError as group:  # raised inside task groups, so it arrives grouped
        reason = str(_first_leaf(group))
        log_event(log, logging.ERROR, "startup.failed", error=reason)
        print(f"{program}: start-up failed: {reason}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    sys.exit(0)


def _first_leaf(group: BaseExceptionGroup[StartupError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _serve(handler: Handler, settings: WorkerSettings) -> None:
    worker = Worker(handler, settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, worker)
        await worker.run()
        tg.cancel_scope.cancel()


async def _stop_on_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        count = 0
        async for signum in received:
            count += 1
            log_event(log, logging.INFO, "signal.received", signal=signal.Signals(signum).name)
            worker.stop(force=count > 1)
