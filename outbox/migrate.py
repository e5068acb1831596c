"""Run the outbox's Alembic migrations from code (tests, the CLI, a deploy step).

The migration scripts live in the repository's ``migrations/`` folder; ``outbox/_migrations``
links to it, so they ship inside the wheel and a host application can name them as the
package resource ``outbox:_migrations/versions``. Run standalone, they keep their own
version table, ``outbox_alembic_version``, so they never touch a host's ``alembic_version``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from outbox.dburl import async_database_url

__all__ = ["VERSION_TABLE", "alembic_config", "downgrade", "migrations_dir", "upgrade"]

VERSION_TABLE = "outbox_alembic_version"


def migrations_dir() -> Path:
    """The Alembic script folder (``env.py``, ``versions/``) that ships with the package."""
    return Path(__file__).resolve().parent / "_migrations"


def alembic_config(database_url: str | URL) -> Config:
    """An Alembic ``Config`` for the outbox migrations against ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    url = async_database_url(database_url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database_url: str | URL, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (blocking; call it before starting workers)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | URL, revision: str = "base") -> None:
    """Migrate the database down to ``revision`` (``base`` drops the outbox table)."""
    command.downgrade(alembic_config(database_url), revision)
