"""Database URLs: accept the plain ``postgresql://`` form and pick the driver ourselves."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from outbox.errors import ConfigurationError

__all__ = ["async_database_url", "libpq_dsn", "redacted_url"]

_POSTGRES_SCHEMES = {"postgres", "postgresql"}


def async_database_url(url: str | URL) -> URL:
    """Return ``url`` with the asyncpg driver, whatever driver (if any) it named.

    ``postgresql://u@h:5432/db``, ``postgres://...`` and ``postgresql+psycopg://...`` all
    become ``postgresql+asyncpg://...``. libpq's ``sslmode=`` becomes asyncpg's ``ssl=``
    (same values). Raises :class:`ConfigurationError` for anything that is not a PostgreSQL
    URL; the message never contains the password.
    """
    parsed = _parse(url)
    query = dict(parsed.query)
    if "sslmode" in query:
        query.setdefault("ssl", query.pop("sslmode"))
    return parsed.set(drivername="postgresql+asyncpg", query=query)


def libpq_dsn(url: str | URL) -> str:
    """Return ``url`` as a plain ``postgresql://`` DSN, the form libpq and asyncpg accept."""
    return _parse(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {redacted_url(url)!r}") from exc
    if parsed.get_backend_name() not in _POSTGRES_SCHEMES:
        raise ConfigurationError(f"expected a postgresql:// URL, got scheme {parsed.drivername!r}")
    return parsed


def redacted_url(url: str | URL) -> str:
    """``url`` with its password (if any) shown as ``***``, for logs and error messages."""
    text = str(url)
    if "@" in text and "://" in text:
        scheme, rest = text.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return text
