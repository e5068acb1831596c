"""Database URLs: accept the plain ``postgresql://`` form and pick the driver ourselves."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from outbox.primitives.errors import ConfigurationError

__all__ = ["NOT_SHOWN", "async_database_url", "libpq_dsn", "redacted_url"]

_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
"""libpq's ``sslmode`` values (asyncpg's ``ssl=`` takes the same)."""


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
    except (ArgumentError, ValueError) as exc:  # ValueError: a malformed host or port
        raise ConfigurationError(f"not a database URL: {redacted_url(url)!r}") from exc
    if parsed.get_backend_name() not in _POSTGRES_SCHEMES:
        raise ConfigurationError(f"expected a postgresql:// URL, got scheme {parsed.drivername!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigurationError(f"port {parsed.port} is not a TCP port (1-65535)")
    for name in ("sslmode", "ssl"):
        mode = parsed.query.get(name)
        if mode is not None and mode not in _SSL_MODES:
            raise ConfigurationError(
                f"{name}={mode!r} is not one of {', '.join(sorted(_SSL_MODES))}"
            )
    return parsed


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
_MASK = "***"
NOT_SHOWN = "(not shown: not a URL, and it may hold a password)"


def redacted_url(url: str | URL) -> str:
    """``url`` for logs and error messages, never its password.

    A URL is shown as SQLAlchemy parses it (so exactly the parts a connection would use):
    the user part becomes ``user:***`` (whether or not it had a password) and ``password``
    / ``sslpassword`` query values become ``***`` (however their names are encoded). Text
    that does not parse is not shown if it could hold a secret (it has ``=``, ``@`` or
    ``://`` in it: ``host=db password=...``): :data:`NOT_SHOWN` instead.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        text = str(url)
        return NOT_SHOWN if any(mark in text for mark in ("=", "@", "://")) else text
    query = {
        key: _MASK if key.lower() in _SECRET_PARAMETERS else value
        for key, value in parsed.query.items()
    }
    password = _MASK if parsed.username or parsed.password else None
    shown = parsed.set(password=password, query=query).render_as_string(hide_password=False)
    return shown.replace(quote(_MASK, safe=""), _MASK)
