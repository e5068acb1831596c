"""Selections of dead rows from the dashboard's form and query fields, and back.

Fields: ``type_prefix``, ``key``, ``error`` (text the last error contains), ``older_than``
and ``newer_than`` (durations such as ``30m``, ``2h``, ``7d``), and for chosen rows ``id``
(repeated). Blank fields are absent. Bad values raise :class:`FormError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from urllib.parse import parse_qs

from outbox.primitives.durations import format_duration, parse_duration
from outbox.storage.admin import DeadFilter

__all__ = [
    "FILTER_FIELDS",
    "MAX_FORM_BYTES",
    "FormError",
    "chosen_ids",
    "filter_fields",
    "filter_of",
    "parse_form",
]

FILTER_FIELDS = ("type_prefix", "key", "error", "older_than", "newer_than")
MAX_FORM_BYTES = 256 * 1024
MAX_CHOSEN = 1000

Fields = Mapping[str, Sequence[str]]
"""Form or query fields: each name to its values, in order."""


class FormError(ValueError):
    """A field's value is not acceptable; the message names the field."""


def parse_form(body: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (at most :data:`MAX_FORM_BYTES`)."""
    if len(body) > MAX_FORM_BYTES:
        raise FormError("the form is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    return parse_qs(text, keep_blank_values=False, max_num_fields=MAX_CHOSEN + 20)


def _one(fields: Fields, name: str) -> str | None:
    values = [v for v in fields.get(name, ()) if v.strip()]
    if len(values) > 1:
        raise FormError(f"{name}: give one value")
    if not values:
        return None
    if "\x00" in values[0]:
        raise FormError(f"{name}: NUL is not allowed")
    return values[0]


def _age(fields: Fields, name: str) -> timedelta | None:
    text = _one(fields, name)
    if text is None:
        return None
    try:
        return parse_duration(text.strip())
    except ValueError as exc:
        raise FormError(f"{name}: {exc}") from None


def filter_of(fields: Fields) -> DeadFilter:
    """The dead rows the filter fields name (no field: every dead row)."""
    return DeadFilter(
        type_prefix=_one(fields, "type_prefix"),
        key=_one(fields, "key"),
        error_contains=_one(fields, "error"),
        older_than=_age(fields, "older_than"),
        newer_than=_age(fields, "newer_than"),
    )


def chosen_ids(fields: Fields) -> tuple[int, ...]:
    """The ``id`` fields: distinct positive ids, in order given (at most 1000)."""
    ids: list[int] = []
    for value in fields.get("id", ()):
        if not value.isdigit() or not 1 <= int(value) < 2**63:
            raise FormError(f"id: {value[:30]!r} is not an outbox id")
        ids.append(int(value))
    if len(ids) > MAX_CHOSEN:
        raise FormError(f"id: at most {MAX_CHOSEN} chosen rows at once")
    return tuple(dict.fromkeys(ids))


def filter_fields(selection: DeadFilter) -> list[tuple[str, str]]:
    """The filter fields that give ``selection`` back (``ids`` aside)."""
    fields = [
        ("type_prefix", selection.type_prefix),
        ("key", selection.key),
        ("error", selection.error_contains),
        (
            "older_than",
            None if selection.older_than is None else format_duration(selection.older_than),
        ),
        (
            "newer_than",
            None if selection.newer_than is None else format_duration(selection.newer_than),
        ),
    ]
    return [(name, value) for name, value in fields if value is not None]
