"""The chaos run's checks, drawn from the ledger and the database after the run.

Each check adds a line to the report; a failed one also adds a problem, and any problem
fails the run. Pub/Sub drops are told apart from the outbox's own failures: a committed
message the subscriber never received passes only if its row is ``published`` and it was
published while the subscriber had no subscription (Redis down or reconnecting), since
Redis Pub/Sub delivers nothing to a subscriber that is not there.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from reliability.ledger import Arrival, Ledger

__all__ = ["Facts", "FaultWindow", "Report", "judge", "quantile"]

PUBLISH_BEFORE_ACK = 5.0
"""A row's publish happened at most this long before its ``published_at`` (the ack)."""


@dataclass(frozen=True)
class FaultWindow:
    name: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Facts:
    """The database after the run."""

    rows: dict[int, tuple[str, str, float | None, str | None]]
    """Outbox id -> (type, status, published_at as epoch seconds, error)."""
    documents: dict[str, tuple[str, str | None]]
    """Document id -> (processing_status, processing_error)."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self, text: str) -> None:
        self.lines.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.lines.append(f"FAIL {text}")


def judge(ledger: Ledger, facts: Facts, faults: list[FaultWindow]) -> Report:
    report = Report()
    first = _first_arrivals(ledger.arrivals)
    _chat_delivery(report, ledger, facts, first)
    _order(report, ledger.arrivals)
    _documents(report, ledger, facts)
    _nothing_stuck(report, facts)
    _recovery(report, ledger, first, faults)
    return report


def _first_arrivals(arrivals: list[Arrival]) -> dict[int, Arrival]:
    first: dict[int, Arrival] = {}
    for arrival in arrivals:
        first.setdefault(arrival.id, arrival)
    return first


def _chat_delivery(report: Report, ledger: Ledger, facts: Facts, first: dict[int, Arrival]) -> None:
    committed = ledger.chat
    received = sum(1 for i in committed if i in first)
    absent = ("", "missing", None, None)
    not_published = {i for i in committed if facts.rows.get(i, absent)[1] != "published"}
    dropped, missing = [], []
    for outbox_id in committed:
        if outbox_id in first or outbox_id in not_published:
            continue
        published_at = facts.rows[outbox_id][2]
        assert published_at is not None
        if _in_gap(published_at, ledger.subscriber_gaps):
            dropped.append(outbox_id)
        else:
            missing.append(outbox_id)
    report.line(
        f"chat: {len(committed):,} committed, {received:,} received by the subscriber, "
        f"{len(dropped):,} published while it was reconnecting (Pub/Sub keeps nothing for "
        f"an absent subscriber; {len(ledger.subscriber_gaps)} gaps, "
        f"{sum(b - a for a, b in ledger.subscriber_gaps):.1f} s in all)"
    )
    if not_published:
        states = Counter(facts.rows.get(i, absent)[1] for i in not_published)
        report.problem(
            f"{len(not_published)} committed chat messages not published: {dict(states)};"
            f" e.g. ids {sorted(not_published)[:10]}"
        )
    if missing:
        report.problem(
            f"{len(missing)} chat messages marked published never reached the subscriber while"
            f" it was subscribed: e.g. ids {sorted(missing)[:10]}"
        )
    leaked = [i for i in ledger.rolled_back if i in first]
    report.line(f"rolled back: {len(ledger.rolled_back):,} outbox ids, {len(leaked)} delivered")
    if leaked:
        report.problem(f"{len(leaked)} rolled-back messages delivered: e.g. {sorted(leaked)[:10]}")
    strangers = [i for i in first if i not in committed and i not in ledger.rolled_back]
    if strangers:
        report.problem(f"{len(strangers)} delivered messages nobody committed: {strangers[:10]}")
    lags = sorted(first[i].at - committed[i][1] for i in committed if i in first)
    if lags:
        report.line(
            f"commit -> subscriber: p50 {_ms(quantile(lags, 0.5))},"
            f" p99 {_ms(quantile(lags, 0.99))}, max {_ms(lags[-1])}"
            " (bursts and faults included)"
        )


def _in_gap(published_at: float, gaps: list[tuple[float, float]]) -> bool:
    return any(a <= published_at and published_at - PUBLISH_BEFORE_ACK <= b for a, b in gaps)


def _order(report: Report, arrivals: list[Arrival]) -> None:
    last: dict[str, int] = {}
    seen: dict[int, int | None] = {}
    duplicates, moved, backwards, unpositioned = 0, [], [], 0
    per_second: Counter[int] = Counter()
    for arrival in arrivals:
        if arrival.id in seen:
            duplicates += 1
            per_second[int(arrival.at)] += 1
            if seen[arrival.id] != arrival.seq:
                moved.append(arrival.id)
            continue
        seen[arrival.id] = arrival.seq
        if arrival.seq is None:
            unpositioned += 1
            continue
        if arrival.seq <= last.get(arrival.room, 0):
            backwards.append((arrival.room, arrival.id, arrival.seq, last[arrival.room]))
        last[arrival.room] = max(arrival.seq, last.get(arrival.room, 0))
    burst = max(per_second.values(), default=0)
    report.line(
        f"order: {len(last)} rooms, {len(backwards)} first deliveries at or below a position"
        f" already seen; {duplicates:,} redeliveries (largest burst {burst:,} in one second)"
    )
    if backwards:
        report.problem(f"{len(backwards)} out-of-order deliveries, e.g. {backwards[:5]}")
    if moved:
        report.problem(f"{len(moved)} redeliveries carried another position: {moved[:10]}")
    if unpositioned:
        report.problem(f"{unpositioned} chat messages arrived without a position (seq)")


def _documents(report: Report, ledger: Ledger, facts: Facts) -> None:
    kinds: Counter[str] = Counter()
    wrong = []
    for outbox_id, (document, kind) in ledger.documents.items():
        kinds[kind] += 1
        status, error = facts.documents.get(document, ("missing", None))
        row_status, row_error = facts.rows[outbox_id][1], facts.rows[outbox_id][3]
        if kind == "readable" and (status, row_status) != ("processed", "published"):
            wrong.append((outbox_id, kind, status, row_status, error))
        if kind == "unreadable" and (status != "failed" or row_status != "dead" or not row_error):
            wrong.append((outbox_id, kind, status, row_status, row_error))
    report.line(
        f"documents: {kinds['readable']:,} readable committed (all must be processed),"
        f" {kinds['unreadable']:,} unreadable (failed, row dead with a reason)"
    )
    if wrong:
        report.problem(f"{len(wrong)} documents ended wrong, e.g. {wrong[:5]}")
    foreign_wrong = [
        (i, facts.rows[i][1], facts.documents[d][0])
        for i, d in ledger.foreign.items()
        if facts.rows[i][1] != "dead" or facts.documents[d][0] != "pending"
    ]
    poison_wrong = [
        (i, what, facts.rows[i][1])
        for i, what in ledger.poison.items()
        if facts.rows[i][1] != "dead" or not facts.rows[i][3]
    ]
    report.line(
        f"poison: {len(ledger.foreign)} messages naming another user's document,"
        f" {len(ledger.poison)} undecodable or of an unknown type; all must be dead with a"
        f" reason, the named documents untouched"
    )
    if foreign_wrong:
        report.problem(
            f"{len(foreign_wrong)} foreign-document messages ended wrong: {foreign_wrong[:5]}"
        )
    if poison_wrong:
        report.problem(
            f"{len(poison_wrong)} poison rows not dead with a reason: {poison_wrong[:5]}"
        )


def _nothing_stuck(report: Report, facts: Facts) -> None:
    states = Counter(status for _, status, _, _ in facts.rows.values())
    report.line(f"rows at the end: {dict(sorted(states.items()))}")
    stuck = states["pending"] + states["in_progress"]
    if stuck:
        report.problem(f"{stuck} rows still pending or in progress after the drain")


def _recovery(
    report: Report, ledger: Ledger, first: dict[int, Arrival], faults: list[FaultWindow]
) -> None:
    """For each fault: time from its end to the next delivery, and to lag under 100 ms."""
    timeline = sorted(
        (a.at, a.at - ledger.chat[a.id][1]) for a in first.values() if a.id in ledger.chat
    )
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, lag in timeline:
        buckets[int(at * 4)].append(lag)  # quarter-second buckets
    report.line("faults (end -> first delivery, end -> lag p50 back under 100 ms):")
    for fault in sorted(faults, key=lambda f: f.start):
        after = next((at for at, _ in timeline if at > fault.end), None)
        calm = next(
            (
                b / 4
                for b in sorted(buckets)
                if b / 4 >= fault.end and statistics.median(buckets[b]) < 0.1
            ),
            None,
        )
        report.line(
            f"  {fault.start - ledger.subscribed_at:6.1f} s  {fault.name:<27}"
            f" {_seconds(after, fault.end):>8} {_seconds(calm, fault.end):>8}  {fault.detail}"
        )


def _seconds(at: float | None, since: float) -> str:
    return "never" if at is None else f"{max(0.0, at - since):.2f} s"


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank); 0 when there are none."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
