"""Structured logs: one event per line, an event name plus fields.

``log_event(logger, logging.INFO, "message.retried", id=7, type="message.created")``
prints, in ``json`` format, ``{"ts": ..., "level": "info", "event": "message.retried",
"id": 7, "type": "message.created"}``; in ``text`` format, ``... info message.retried id=7
type=message.created``. Plain ``logger.info("text")`` calls from libraries print the same
way with the text as the event.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging", "log_event"]

_FIELDS = "outbox_fields"


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (skipped cheaply when ``level`` is disabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if self.json_lines:
            return json.dumps(fields, default=str, ensure_ascii=False)
        head = f"{fields.pop('ts')} {fields.pop('level')} {fields.pop('event')}"
        return " ".join([head, *(f"{k}={_text(v)}" for k, v in fields.items())])


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in ``fmt`` (``json`` or ``text``) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
