"""Value types crossing the library boundary: messages in, claimed rows out, ack results.

Also the checks that a payload can be stored as ``jsonb`` and read back by a worker's
``json.loads`` (:func:`payload_problem`, :func:`text_problem`, :func:`loads_as_worker`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import BaseModel

from outbox.primitives.constants import MAX_INT_DIGITS, MAX_PAYLOAD_DEPTH

__all__ = [
    "AckResult",
    "ClaimedMessage",
    "JSONValue",
    "NewMessage",
    "Payload",
    "ReapResult",
    "RescheduleResult",
    "loads_as_worker",
    "payload_problem",
    "text_problem",
]

JSONValue = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None
"""Any value that JSON can represent."""

Payload = dict[str, JSONValue] | BaseModel
"""What a message carries: a JSON object, or a pydantic model dumped in JSON mode."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message for :func:`outbox.enqueue_many`; fields as in :func:`outbox.enqueue`."""

    type: str
    payload: Payload
    key: str | None = None
    delay: timedelta | float | None = None
    available_at: datetime | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A row claimed by a worker, leased to ``locked_by`` under ``lease_token``.

    ``attempts`` already counts this claim. Acknowledgements are fenced on ``(id,
    lease_token)``, so keep the object and hand it back to ``mark_published``/
    ``reschedule``/... unchanged.
    """

    id: int
    type: str
    key: str | None
    payload: JSONValue
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    locked_by: str
    locked_until: datetime
    error: str | None
    lease_token: UUID
    seq: int | None = None
    """The message's position in its key's order (ordered claims of keyed rows), kept for
    every redelivery; ``None`` for a row without a key or claimed unordered."""


@dataclass(frozen=True, slots=True)
class AckResult:
    """Which ids an acknowledgement changed and which it did not (their lease was lost)."""

    applied: frozenset[int]
    lost: frozenset[int]

    @property
    def ok(self) -> bool:
        """True when every message's lease was still held and the change applied."""
        return not self.lost


@dataclass(frozen=True, slots=True)
class RescheduleResult:
    """Outcome of :func:`outbox.reschedule`: retried later, given up (``dead``), or lost."""

    retried: frozenset[int]
    dead: frozenset[int]
    lost: frozenset[int]

    @property
    def ok(self) -> bool:
        return not self.lost


@dataclass(frozen=True, slots=True)
class ReapResult:
    """Rows whose lease had expired: back to ``pending``, or ``dead`` at the attempt limit."""

    requeued: frozenset[int]
    dead: frozenset[int]


_INT_BOUND = 10**MAX_INT_DIGITS  # the smallest integer with more than MAX_INT_DIGITS digits


def text_problem(text: str) -> str | None:
    """What in ``text`` PostgreSQL cannot store (NUL, a lone surrogate), else None.

    A noun phrase, for "<field> contains ...".
    """
    if "\x00" in text:
        return "NUL, which PostgreSQL cannot store"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = text[exc.start]
            return f"a lone surrogate (U+{ord(char):04X}), which is not valid Unicode"
    return None


def payload_problem(value: object) -> str | None:
    """Why the JSON value ``value`` could not be stored and read back by a worker, or None.

    A verb phrase, for "payload ...".

    Walks the value without recursion: containers nested deeper than
    :data:`~outbox.primitives.constants.MAX_PAYLOAD_DEPTH` (cycles too), strings (keys included)
    with NUL or a lone surrogate, NaN and infinities, integers of more than
    :data:`~outbox.primitives.constants.MAX_INT_DIGITS` digits. Types JSON cannot represent
    at all are left to the serialiser, which names them.
    """
    if not isinstance(value, (dict, list, tuple)):
        return _scalar_problem(value)
    # Depth first, so a circular reference reaches the depth bound after a few steps.
    stack: list[tuple[object, int]] = [(value, 1)]  # (container, its depth)
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"is nested deeper than {MAX_PAYLOAD_DEPTH} levels (or contains itself)"
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str or not key.isascii() or "\x00" in key:
                    problem = _scalar_problem(key)
                    if problem:
                        return problem
            children: Iterable[object] = item.values()
        else:
            children = item  # type: ignore[assignment]
        for child in children:
            if isinstance(child, str):  # the common cases first, without a call
                if child.isascii() and "\x00" not in child:
                    continue
            elif isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))
                continue
            elif child is None or child is True or child is False:
                continue
            problem = _scalar_problem(child)
            if problem:
                return problem
    return None


_TOO_MANY_DIGITS = (
    f"holds an integer of more than {MAX_INT_DIGITS} digits, which a worker could not decode"
)


def _scalar_problem(item: object) -> str | None:
    if isinstance(item, str):
        problem = text_problem(item)
        return f"contains {problem}" if problem else None
    if isinstance(item, float):
        return None if math.isfinite(item) else _not_json(repr(item))
    if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= _INT_BOUND:
        return _TOO_MANY_DIGITS
    return None


def _not_json(number: str) -> str:
    return f"is not JSON-serialisable: it holds {number} (JSON has no NaN or Infinity)"


def _int_with_few_digits(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(_TOO_MANY_DIGITS)
    return int(digits)


def _no_constant(name: str) -> object:
    raise ValueError(_not_json(name))


def loads_as_worker(text: str) -> object:
    """``text`` decoded as a worker will decode it, or ``ValueError`` saying what fails.

    Stricter than ``json.loads``: ``NaN``/``Infinity`` and integers of more than
    :data:`~outbox.primitives.constants.MAX_INT_DIGITS` digits are refused whatever this
    process's own int-conversion limit, and nesting too deep is a ``ValueError``, not a
    ``RecursionError``. The result still needs :func:`payload_problem`.
    """
    try:
        return json.loads(text, parse_int=_int_with_few_digits, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"is nested deeper than {MAX_PAYLOAD_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None
