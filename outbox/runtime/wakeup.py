"""Waking an idle worker: ``LISTEN outbox_new`` with polling as the fallback.

Migration ``outbox_0002`` sends one notification per inserting statement (folded to one per
transaction). A notification means only "claim now"; :meth:`Wakeup.wait` also returns after
the poll interval, so nothing depends on notifications arriving. The listening connection is
re-opened after any loss (and the worker is woken then, as notifications may have been
missed). With ``listen=False`` (PgBouncer transaction mode) it only polls.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from outbox.primitives.delays import GrowingDelay
from outbox.primitives.errors import error_text
from outbox.primitives.logs import log_event
from outbox.storage.pool import connect

__all__ = ["NOTIFY_CHANNEL", "Wakeup"]

NOTIFY_CHANNEL = "outbox_new"

log = logging.getLogger("outbox.wakeup")


class Wakeup:
    """A wake-up signal set by notifications, by :meth:`wake`, and by the poll timer."""

    def __init__(self, database_url: str, *, listen: bool, application_name: str) -> None:
        self.database_url = database_url
        self.listen = listen
        self.application_name = application_name
        self._event = anyio.Event()

    def wake(self) -> None:
        """Make the next (or current) :meth:`wait` return at once."""
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Return when woken (since the last wait) or after ``seconds``."""
        with anyio.move_on_after(seconds):
            await self._event.wait()
        self._event = anyio.Event()

    async def run(self) -> None:
        """Keep a LISTEN connection open until cancelled (no-op when not listening)."""
        if not self.listen:
            await anyio.sleep_forever()
        delays = GrowingDelay(0.1, 5.0)
        while True:
            try:
                await self._listen_until_lost()
                delays.reset()
            except Exception as exc:  # any failure: log, back off, reconnect
                log_event(log, logging.WARNING, "listen.unavailable", error=error_text(exc))
            self.wake()  # notifications may have been missed while down
            await anyio.sleep(delays.next())

    async def _listen_until_lost(self) -> None:
        conn = await connect(self.database_url, application_name=self.application_name)
        lost = anyio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            log_event(log, logging.DEBUG, "listen.started", channel=NOTIFY_CHANNEL)
            self.wake()  # rows inserted before LISTEN took effect
            while not lost.is_set():
                # asyncpg notices a dead socket only when it reads; probe now and then.
                with anyio.move_on_after(15):
                    await lost.wait()
                if not lost.is_set():
                    with anyio.fail_after(10):
                        await conn.execute("SELECT 1")
            log_event(log, logging.WARNING, "listen.lost")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await _close(conn)

    def _on_notify(self, *_args: Any) -> None:
        self._event.set()


async def _close(conn: Any) -> None:
    try:
        await conn.close(timeout=1)
    except Exception:
        conn.terminate()
