"""Optional dependencies: an import that needs an extra names the extra when it fails.

``pip install pg-outbox-relay`` is the library alone (enqueue, claim, migrations, the
``outbox`` command). Each process built on it brings its own dependencies as an extra, and a
module that needs one wraps those imports::

    with requires_extra("worker"):
        from prometheus_client import Counter

so that without it the import fails with :class:`MissingExtraError` (an ``ImportError``,
chained from the original) saying which extra to install. :func:`require_extra` checks
modules up front without importing them (for a dependency imported only on first use).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from outbox.primitives.errors import OutboxError

__all__ = ["EXTRAS", "MissingExtraError", "require_extra", "requires_extra"]

DISTRIBUTION: Final = "pg-outbox-relay"

EXTRAS: Final = {
    "worker": "the worker runtime",
    "chat": "the chat worker",
    "document": "the document worker",
    "sidecar": "the reference sidecar",
    "dashboard": "the web dashboard",
}
"""Each extra of the distribution that code checks for, and what needs it."""


class MissingExtraError(OutboxError, ImportError):
    """A module needs an extra of ``pg-outbox-relay`` that is not installed."""

    def __init__(self, extra: str, module: str | None) -> None:
        what = EXTRAS.get(extra, f"this part of {DISTRIBUTION}")
        missing = f" (no module named {module!r})" if module else ""
        super().__init__(
            f"{what} needs the {extra!r} extra{missing}: pip install '{DISTRIBUTION}[{extra}]'",
            name=module,
        )
        self.extra = extra


@contextmanager
def requires_extra(extra: str) -> Iterator[None]:
    """Around the imports of an extra's dependencies: a missing one raises
    :class:`MissingExtraError` naming ``extra``, chained from the ``ModuleNotFoundError``."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise MissingExtraError(extra, exc.name) from exc


def require_extra(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` unless every top-level module in
    ``modules`` can be found. Nothing is imported."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as exc:
            raise MissingExtraError(extra, module) from exc
        if not found:
            raise MissingExtraError(extra, module)
