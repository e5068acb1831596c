"""Hooks for a host application's own Alembic ``env.py`` that runs the outbox's revisions as
a branch of its history (docs/table-and-migrations.md, "Inside your application's Alembic").

The host's ``alembic.ini`` names :data:`VERSION_LOCATION` in ``version_locations`` (with
``path_separator = space``), and its ``env.py`` passes both hooks to ``context.configure``::

    context.configure(
        connection=connection,
        target_metadata=target_metadata,  # [your_metadata, outbox.metadata] is fine too
        include_object=include_object,
        process_revision_directives=process_revision_directives,
    )

* :func:`include_object` leaves the outbox's tables (with their columns, indexes and
  constraints) and its standalone version table out of autogenerate, whichever metadata the
  host compares: the outbox's own revisions own them, so the host's autogenerate never
  proposes ``drop_table('outbox')`` nor a second ``create_table('outbox')``.
* :func:`process_revision_directives` refuses to write a new revision into the outbox's
  package folder (``site-packages/outbox/_migrations/versions`` in a wheel install), which
  is where a plain ``alembic revision`` puts it while the outbox's branch is the only head.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from outbox.storage.schema import metadata

if TYPE_CHECKING:
    from alembic.operations.ops import MigrationScript
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.sql.schema import SchemaItem

__all__ = ["BRANCH", "VERSION_LOCATION", "include_object", "process_revision_directives"]

VERSION_LOCATION = "outbox:_migrations/versions"
"""The outbox's revisions, as a package resource for the host's ``version_locations``."""

BRANCH = "outbox"
"""The outbox branch's label: ``alembic upgrade outbox@head``."""

_STANDALONE_VERSION_TABLE = "outbox_alembic_version"
"""The version table of ``outbox migrate`` (``outbox.storage.migrate.VERSION_TABLE``): a
database first migrated by the ``outbox`` command has it; the host's autogenerate must not
propose dropping it."""

_OUTBOX_TABLES = frozenset({*metadata.tables, _STANDALONE_VERSION_TABLE})


def include_object(
    object: SchemaItem,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """Alembic's ``include_object`` hook: ``False`` for the outbox's tables and everything
    on them, ``True`` for the rest (the host's own objects)."""
    if type_ == "table":
        return name not in _OUTBOX_TABLES
    table = getattr(object, "table", None)
    return getattr(table, "name", None) not in _OUTBOX_TABLES


def process_revision_directives(
    context: MigrationContext,
    revision: str | Iterable[str | None] | Iterable[str],
    directives: list[MigrationScript],
) -> None:
    """Alembic's ``process_revision_directives`` hook: raise ``alembic.util.CommandError``
    (nothing written) when a new revision would go into the outbox's own folder.

    That happens with ``alembic revision`` while the outbox's branch is the only head (no
    revision of the host's yet), or with ``--head outbox@head``. Name the host's branch
    instead: the first time ``--head base --branch-label <yours> --version-path
    <your versions folder>``, then ``--head <yours>@head``.
    """
    from alembic.util import CommandError

    from outbox.storage.migrate import migrations_dir

    ours = migrations_dir().resolve()
    for directive in directives:
        folder = _target_folder(context, directive)
        if folder is not None and folder.resolve().is_relative_to(ours):
            raise CommandError(
                f"refusing to write a revision into the outbox's own migrations ({folder}):"
                " base it on your branch instead: the first time"
                " `alembic revision --autogenerate -m MESSAGE --head base"
                " --branch-label app --version-path alembic/versions` (your label and"
                " folder), then `alembic revision --autogenerate -m MESSAGE --head app@head`"
            )


def _target_folder(context: MigrationContext, directive: MigrationScript) -> Path | None:
    """Where Alembic will write ``directive`` (as ``ScriptDirectory.generate_revision``
    decides), or ``None`` when it cannot tell (Alembic then reports the problem itself)."""
    if directive.version_path is not None:
        return Path(directive.version_path)
    if context.script is None:
        return None
    try:
        heads = context.script.revision_map.get_revisions(directive.head or "head")
    except Exception:  # several heads, an unknown revision: Alembic's own error follows
        return None
    for head in heads:
        path = getattr(head, "path", None)  # a Script; None and "base" have none
        if isinstance(path, str):
            return Path(path).parent
    return None
