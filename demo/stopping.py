"""Stop signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed) request a stop.

The handler only counts the request and says so. A handler that raised
``KeyboardInterrupt`` instead could land anywhere: inside a clean-up (cutting it short) or
in code that swallows exceptions (a logging lock, a finalizer), where the stop would be
lost. So start-up calls :meth:`StopFlag.check` between its steps and while it waits, and
the flow polls :attr:`StopFlag.count`; clean-ups are never interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["STOP_SIGNALS", "StopFlag", "StopRequested"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """A stop signal arrived before the flow began (raised by :meth:`StopFlag.check`)."""


class StopFlag:
    """How many stop signals arrived since :meth:`install`."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._received)

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop signal has arrived."""
        if self.count:
            raise StopRequested

    def ignore_from_now_on(self) -> None:
        """For the interpreter's shutdown, once everything is stopped: a late signal must
        not turn the exit code into "killed by SIGINT"."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _received(self, signum: int, frame: object) -> None:
        self.count += 1
        # os.write, not print: the signal may arrive while the main thread is printing.
        # After a hang-up or with the reader gone the write fails: that must not raise.
        with contextlib.suppress(OSError):
            os.write(1, b"demo: stopping, one moment\n")
