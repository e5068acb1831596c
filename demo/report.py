"""What the demo shows: a live view while it runs, and the summary with its verdict.

Counts come from the demo's own database (it holds only the demo's rows, so full counts
are cheap) and from the subscriber. Lag is commit -> arrival at the subscriber for chat
messages, and enqueue -> ``published`` (the document processed) for documents.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from demo.traffic import Received, Sent

__all__ = ["LiveView", "Summary", "percentile", "show", "summarize"]

_OUTBOX_COUNTS = text(
    "SELECT type LIKE 'document.%' AS document, status, count(*) FROM outbox GROUP BY 1, 2"
)
_DOCUMENT_LAG = text(
    "SELECT extract(epoch FROM published_at - created_at) FROM outbox"
    " WHERE type LIKE 'document.%' AND status = 'published'"
    " AND published_at > statement_timestamp() - make_interval(secs => :window)"
)
_DOCUMENT_OUTCOMES = text(
    "SELECT o.id, o.status, d.processing_status, o.error,"
    " extract(epoch FROM o.published_at - o.created_at)"
    " FROM outbox o JOIN documents d ON d.id = (o.payload ->> 'documentId')::uuid"
    " WHERE o.type = 'document.preprocess.v1'"
)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def chat_lags(sent: Sent, received: Received, since: float = 0.0) -> list[float]:
    """Commit -> arrival seconds of chat messages that arrived after ``since`` (epoch)."""
    return [
        max(0.0, arrived - sent.chat[i])
        for i, arrived in received.at.items()
        if arrived >= since and i in sent.chat
    ]


async def outbox_counts(engine: AsyncEngine) -> dict[tuple[bool, str], int]:
    """Rows by (is a document message, status)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_OUTBOX_COUNTS)).all()
    return {(bool(document), str(status)): int(n) for document, status, n in rows}


async def document_lags(engine: AsyncEngine, window: float) -> list[float]:
    """Enqueue -> processed seconds of documents published in the last ``window`` seconds."""
    async with engine.connect() as conn:
        return [float(v) for (v,) in await conn.execute(_DOCUMENT_LAG, {"window": window})]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def _lag(values: list[float]) -> str:
    return f"p50 {_ms(percentile(values, 0.5))}  p99 {_ms(percentile(values, 0.99))}"


@dataclass
class LiveView:
    """Samples and prints progress: redrawn in place on a terminal, else one block per
    sample (so a log or a pipe gets a readable record)."""

    engine: AsyncEngine
    sent: Sent
    received: Received
    out: TextIO = field(default_factory=lambda: sys.stdout)
    phase: str = "producing (Ctrl-C stops)"
    started: float = field(default_factory=time.monotonic)
    _last: tuple[float, int, int, int, int] | None = None
    _drawn: int = 0

    async def sample(self) -> None:
        """Take one sample and print it."""
        now, wall = time.monotonic(), time.time()
        counts = await outbox_counts(self.engine)
        window = 1.0 if self._last is None else max(0.2, now - self._last[0])
        doc_lags = await document_lags(self.engine, window)
        processed = counts.get((True, "published"), 0)
        dead_documents = counts.get((True, "dead"), 0)
        figures = (now, len(self.sent.chat), len(self.received.at), len(self.sent.documents))
        rates = self._rates((*figures, processed))
        self._last = (*figures, processed)
        chat_lag = chat_lags(self.sent, self.received, since=wall - window)
        lines = [
            f"{now - self.started:6.1f} s  {self.phase}",
            f"  chat       sent {figures[1]:>8,} ({rates[0]})   delivered {figures[2]:>8,}"
            f" ({rates[1]})   lag {_lag(chat_lag)}",
            f"  documents  sent {figures[3]:>8,} ({rates[2]})   processed {processed:>8,}"
            f" ({rates[3]})   failed {dead_documents:,}   lag {_lag(doc_lags)}",
            "  outbox     "
            + "   ".join(
                f"{status.replace('_', ' ')} {total:,}"
                for status in ("pending", "in_progress", "published", "dead")
                for total in [counts.get((True, status), 0) + counts.get((False, status), 0)]
            ),
        ]
        self._print(lines)

    def _rates(self, figures: tuple[float, int, int, int, int]) -> list[str]:
        if self._last is None:
            return ["  -/s"] * 4
        elapsed = max(1e-6, figures[0] - self._last[0])
        return [f"{(figures[i] - self._last[i]) / elapsed:5.0f}/s" for i in range(1, 5)]

    def _print(self, lines: list[str]) -> None:
        redraw = ""
        if self.out.isatty():
            if self._drawn:
                redraw = f"\x1b[{self._drawn}F\x1b[J"
            self._drawn = len(lines)
        show(redraw + "\n".join(lines), self.out)


def show(text: str, out: TextIO | None = None) -> None:
    """Print ``text`` and flush; if the terminal is gone (a hang-up, a closed pipe) say
    nothing rather than fail: the demo still stops everything and writes its summary file."""
    with contextlib.suppress(OSError):
        stream = out if out is not None else sys.stdout
        stream.write(text + "\n")
        stream.flush()


RATE_HELD_SHARE = 0.95
"""A rate counts as held when at least this share of it was reached."""


@dataclass
class Rates:
    """The rates asked for, and what the run reached while it produced."""

    seconds: float
    """How long the producers ran."""
    chat_asked: float
    chat_committed: float
    chat_delivered: float
    """Chat messages that reached the subscriber while the producers ran, per second."""
    documents_asked: float
    documents_committed: float

    @property
    def held(self) -> bool:
        """Every rate asked for was committed, and the chat rate delivered as it came."""
        return all(
            reached >= RATE_HELD_SHARE * asked
            for asked, reached in (
                (self.chat_asked, self.chat_committed),
                (self.chat_asked, self.chat_delivered),
                (self.documents_asked, self.documents_committed),
            )
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "rate_seconds": round(self.seconds, 3),
            "chat_rate_asked": self.chat_asked,
            "chat_rate_committed": round(self.chat_committed, 1),
            "chat_rate_delivered": round(self.chat_delivered, 1),
            "document_rate_asked": self.documents_asked,
            "document_rate_committed": round(self.documents_committed, 1),
            "rate_held": self.held,
        }

    def lines(self) -> list[str]:
        out = [
            f"  rates          asked {self.chat_asked:,.0f} chat/s and"
            f" {self.documents_asked:,.0f} documents/s; over {self.seconds:.0f} s committed"
            f" {self.chat_committed:,.0f} chat/s (delivered {self.chat_delivered:,.0f}/s as"
            f" they came) and {self.documents_committed:,.0f} documents/s"
        ]
        if not self.held:
            out.append(
                "RATE NOT HELD: this machine did not keep up with the rate asked for (less than"
                f" {RATE_HELD_SHARE:.0%} of it); the latencies above are for the rates it reached."
            )
        return out


@dataclass
class Summary:
    """The end of a run: what was sent and what became of it."""

    seconds: float
    chat_sent: int
    chat_delivered: int
    chat_repeats: int
    chat_missing: list[int]
    documents_sent: int
    documents_processed: int
    documents_failed: int
    documents_unreadable: int
    documents_unfinished: list[int]
    documents_wrong: list[str]
    dead_example: str | None
    chat_lag: list[float] = field(repr=False)
    document_lag: list[float] = field(repr=False)
    rates: Rates | None = None

    @property
    def ok(self) -> bool:
        """Every chat message arrived, and each document ended as it should have."""
        return not (self.chat_missing or self.documents_unfinished or self.documents_wrong)

    def as_json(self) -> dict[str, Any]:
        figures = {
            k: v for k, v in vars(self).items() if k not in ("chat_lag", "document_lag", "rates")
        }
        if self.rates is not None:
            figures.update(self.rates.as_json())
        for name, values in (("chat_lag", self.chat_lag), ("document_lag", self.document_lag)):
            figures[f"{name}_p50_ms"] = _milliseconds(percentile(values, 0.5))
            figures[f"{name}_p99_ms"] = _milliseconds(percentile(values, 0.99))
        return {**figures, "ok": self.ok}

    def lines(self) -> list[str]:
        out = [
            f"Summary after {self.seconds:.1f} s",
            f"  chat messages  sent {self.chat_sent:,}   delivered {self.chat_delivered:,}"
            f" ({self.chat_repeats} repeats)   commit -> subscriber {_lag(self.chat_lag)}",
            f"  documents      sent {self.documents_sent:,}   processed"
            f" {self.documents_processed:,}   failed {self.documents_failed:,}"
            f" ({self.documents_unreadable} unreadable on purpose)"
            f"   enqueue -> processed {_lag(self.document_lag)}",
        ]
        if self.rates is not None:
            out.extend(self.rates.lines())
        if self.dead_example:
            out.append(f"  dead-lettered, for example: {self.dead_example}")
        if self.ok:
            out.append(
                "OK: every chat message was delivered, every readable document processed,"
                " and only the unreadable ones are dead, each with its reason."
            )
            return out
        if self.chat_missing:
            out.append(
                f"NOT DELIVERED: {len(self.chat_missing)} chat messages, e.g. ids"
                f" {self.chat_missing[:10]}"
            )
        if self.documents_unfinished:
            out.append(
                f"STILL QUEUED: {len(self.documents_unfinished)} documents, e.g. ids"
                f" {self.documents_unfinished[:10]}"
            )
        out.extend(f"WRONG: {problem}" for problem in self.documents_wrong[:10])
        return out


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def reached_rates(
    sent: Sent, received: Received, producing: tuple[float, float], chat: float, documents: float
) -> Rates:
    """What the producers committed between ``producing`` (wall-clock start and end) and
    what reached the subscriber meanwhile, per second, beside the rates asked for."""
    start, end = producing
    seconds = max(end - start, 1e-9)
    delivered = sum(1 for at in received.at.values() if at <= end)
    return Rates(
        seconds=seconds,
        chat_asked=chat,
        chat_committed=len(sent.chat) / seconds,
        chat_delivered=delivered / seconds,
        documents_asked=documents,
        documents_committed=len(sent.documents) / seconds,
    )


async def summarize(
    engine: AsyncEngine, sent: Sent, received: Received, seconds: float, rates: Rates | None = None
) -> Summary:
    """Compare what was committed with what arrived and how each document ended."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_DOCUMENT_OUTCOMES)).all()
    unfinished: list[int] = []
    wrong: list[str] = []
    processed = failed = 0
    lags: list[float] = []
    dead_example = None
    for outbox_id, status, document_status, error, lag in rows:
        if outbox_id not in sent.documents:
            continue
        expected = "dead" if outbox_id in sent.unreadable else "published"
        if status in ("pending", "in_progress"):
            unfinished.append(outbox_id)
            continue
        if status != expected:
            wrong.append(f"document message {outbox_id} is {status}: {error}")
        want_document = {"published": "processed", "dead": "failed"}[status]
        if document_status != want_document:
            wrong.append(f"message {outbox_id} is {status} but its document {document_status}")
        if status == "published":
            processed += 1
            lags.append(float(lag))
        else:
            failed += 1
            dead_example = dead_example or f"#{outbox_id}: {error}"
    return Summary(
        seconds=seconds,
        chat_sent=len(sent.chat),
        chat_delivered=sum(1 for i in sent.chat if i in received.at),
        chat_repeats=received.repeats,
        chat_missing=sorted(set(sent.chat) - set(received.at)),
        documents_sent=len(sent.documents),
        documents_processed=processed,
        documents_failed=failed,
        documents_unreadable=len(sent.unreadable),
        documents_unfinished=sorted(unfinished),
        documents_wrong=wrong,
        dead_example=dead_example,
        chat_lag=chat_lags(sent, received),
        document_lag=lags,
        rates=rates,
    )
