"""Run the outbox's Alembic migrations from code (tests, the CLI, a deploy step).

The migration scripts live in the repository's ``migrations/`` folder; ``outbox/_migrations``
links to it, so they ship inside the wheel and a host application can name them as the
package resource ``outbox:_migrations/versions``. Run standalone, they keep their own
version table, ``outbox_alembic_version``, so they never touch a host's ``alembic_version``.

The reference documents schema of the document worker (``documents``,
``document_chunks``) is a separate branch in its own folder, ``_migrations/documents``: it
runs only when asked for (``documents=True``), never as part of the outbox's own history.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from outbox.primitives.urls import async_database_url

__all__ = [
    "DOCUMENTS_FOLDER",
    "VERSION_TABLE",
    "alembic_config",
    "downgrade",
    "migrations_dir",
    "upgrade",
]

VERSION_TABLE = "outbox_alembic_version"
DOCUMENTS_FOLDER = "documents"
"""The folder (under :func:`migrations_dir`) of the reference documents branch."""


def migrations_dir() -> Path:
    """The Alembic script folder (``env.py``, ``versions/``) that ships with the package."""
    return Path(__file__).resolve().parent.parent / "_migrations"


def alembic_config(database_url: str | URL) -> Config:
    """An Alembic ``Config`` for both branches (``outbox``, ``documents``) on ``database_url``.

    Both folders are always known, so a database that has the documents branch can still
    be migrated; which branch runs is the revision's choice (``outbox@head``, ``heads``).
    """
    config = Config()
    root = migrations_dir()
    config.set_main_option("script_location", str(root))
    folders = [root / "versions", root / DOCUMENTS_FOLDER]
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(str(f) for f in folders))
    url = async_database_url(database_url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(
    database_url: str | URL, revision: str | None = None, *, documents: bool = False
) -> None:
    """Migrate the database (blocking; call it before starting workers).

    By default to ``outbox@head``; ``documents=True`` also creates the reference
    ``documents``/``document_chunks`` tables (``heads``). ``revision`` overrides both.
    """
    target = revision or ("heads" if documents else "outbox@head")
    command.upgrade(alembic_config(database_url), target)


def downgrade(database_url: str | URL, revision: str = "base") -> None:
    """Migrate down to ``revision`` (``base`` drops every table the migrations made)."""
    command.downgrade(alembic_config(database_url), revision)
