"""The operators' audit trail: who changed which dead rows, when, and how many.

Every change an operator makes through :mod:`outbox.storage.admin` with an :class:`Audit`
(the dashboard always passes one, the CLI too) writes ``outbox_audit`` rows in the very
statements that change the outbox, one row per batch, so a record exists exactly when its
change committed. The batches of one call share an ``operation`` id; their
``rows_affected`` add up to the call's total. Batches that changed nothing write nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from outbox.storage import statements as sql
from outbox.storage.execution import AsyncDB, fetch_all

__all__ = ["Audit", "AuditRecord", "recent_audit"]


@dataclass(frozen=True)
class Audit:
    """Who makes a change (``actor``: free text such as ``dashboard@127.0.0.1`` or
    ``cli:alice@host``; never a secret). ``operation`` groups the batches of one call."""

    actor: str
    operation: uuid.UUID = field(default_factory=uuid.uuid4)

    def params(self, action: str, selection: dict[str, Any]) -> dict[str, Any]:
        """The statement parameters of an audited batch."""
        return {
            "audit_actor": self.actor,
            "audit_action": action,
            "audit_operation": self.operation,
            "audit_selection": json.dumps(selection, sort_keys=True),
        }


@dataclass(frozen=True)
class AuditRecord:
    """One audit row: one batch of one operator's change."""

    id: int
    at: datetime
    actor: str
    action: str
    operation: uuid.UUID
    selection: dict[str, Any]
    rows_affected: int


async def recent_audit(db: AsyncDB, *, limit: int = 50) -> list[AuditRecord]:
    """The latest ``limit`` audit rows, newest first. Read-only."""
    rows = await fetch_all(db, sql.RECENT_AUDIT, {"limit": limit})
    records = []
    for id_, at, actor, action, operation, selection, rows_affected in rows:
        if isinstance(selection, str):  # a handle without the JSON codecs
            selection = json.loads(selection)
        records.append(AuditRecord(id_, at, actor, action, operation, selection, rows_affected))
    return records
