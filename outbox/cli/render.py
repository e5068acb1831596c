"""Text and JSON output: aligned tables, ages, timestamps, one-line texts, progress.

Every text that comes from the database or a server (types, keys, errors, prefixes) and is
shown to a person passes through :func:`printable`, so that no stored text can move the
cursor, retitle or clear the operator's terminal. JSON output is exact: ``json_text`` escapes
control characters as JSON does, and nothing else.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO

__all__ = [
    "Cell",
    "Progress",
    "format_age",
    "format_rate",
    "format_time",
    "json_text",
    "messages",
    "one_line",
    "printable",
    "table",
]

Cell = str | int | float | None
"""A table cell: text, a number, or ``None`` (shown as ``-``)."""


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, left: Sequence[str] = ()
) -> list[str]:
    """Lines of an aligned table, ``None`` shown as ``-`` and floats to one decimal.

    Columns named in ``left`` are left-aligned (text), the others right-aligned (numbers).
    The last column is not padded when left-aligned (it may be long, e.g. an error text).
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(values: Sequence[str]) -> str:
        out = []
        for i, value in enumerate(values):
            if headers[i] not in left:
                out.append(value.rjust(widths[i]))
            else:
                out.append(value if i == last else value.ljust(widths[i]))
        return "  ".join(out)

    return [line(headers), *(line(r) for r in cells)]


def _cell(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format_rate(value)
    return printable(str(value))


# Control characters (C0, DEL, C1), format characters (bidirectional overrides, zero-width),
# line and paragraph separators, and surrogates (undecodable bytes from the command line).
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on shown as an escape.

    ESC becomes ``\\x1b``, a newline ``\\n``, U+202E ``\\u202e``: visible, one line, and
    inert. Other text, backslashes included, is unchanged.
    """
    if text.isprintable():  # the usual case, decided in C
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in "\n\r\t":
        return repr(char)[1:-1]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def format_rate(value: float | None) -> str:
    """A rate or other measure for a table: ``-`` when unknown, one decimal otherwise."""
    return "-" if value is None else f"{value:.1f}"


def format_age(seconds: float) -> str:
    """``3.2 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def format_time(moment: datetime) -> str:
    """``moment`` in UTC to the second: ``2024-05-01T12:00:03Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(text: str | None, width: int = 80) -> str:
    """``text`` on one line (whitespace runs become one space), :func:`printable`, cut to
    ``width`` with ``…``."""
    if text is None:
        return "-"
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def messages(count: int, kind: str = "") -> str:
    """``'1 dead message'``, ``'3 dead messages'``: a count and its noun, ``kind`` before it."""
    noun = "message" if count == 1 else "messages"
    return f"{count} {kind} {noun}" if kind else f"{count} {noun}"


def json_text(value: object, *, compact: bool = False) -> str:
    """``value`` as JSON: indented for one-shot commands, one line with ``compact``."""
    if compact:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2, ensure_ascii=False)


class Progress:
    """A progress line on stderr, rewritten in place; silent unless stderr is a terminal.

    ``done`` is the running total of rows committed so far (what an interruption reports).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._active = self._stream.isatty()
        self._shown = False
        self.done = 0

    def update(self, text: str, *, done: int | None = None) -> None:
        if done is not None:
            self.done = done
        if self._active:
            self._stream.write(f"\r\x1b[K{text}")
            self._stream.flush()
            self._shown = True

    def finish(self) -> None:
        """End the progress line (before the final report)."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
