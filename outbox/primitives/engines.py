"""SQLAlchemy engine options for the producers' own engines (PgBouncer in transaction mode).

PgBouncer in transaction pooling mode hands each transaction to whichever server connection
is free, so a named prepared statement made in one transaction is missing (``prepared
statement "__asyncpg_stmt_e__" does not exist``) or already taken (``"_pg3_0" already
exists``) in the next. :func:`engine_options` turns that off per driver:

* asyncpg (``postgresql+asyncpg``): no statement caches (asyncpg's ``statement_cache_size``,
  SQLAlchemy's ``prepared_statement_cache_size``), and every statement SQLAlchemy prepares
  gets a name of its own (``prepared_statement_name_func``), so two clients sharing a server
  connection never collide.
* psycopg 3 (``postgresql+psycopg``, ``postgresql+psycopg_async``): ``prepare_threshold=None``,
  never prepare.
* psycopg2 and pg8000 prepare nothing by name: no options are needed.

PgBouncer 1.21+ with ``max_prepared_statements`` set keeps protocol-level prepared
statements working in transaction mode; then no options are needed either.
"""

from __future__ import annotations

import uuid

from sqlalchemy.engine import URL, make_url

__all__ = ["engine_options"]


def _statement_name() -> str:
    return f"__outbox_{uuid.uuid4().hex}__"


def engine_options(url: str | URL, *, pgbouncer: bool = False) -> dict[str, object]:
    """Keyword arguments for ``create_engine`` / ``create_async_engine`` on ``url``.

    ``pgbouncer=True``: safe behind PgBouncer in transaction pooling mode (see the module
    docstring); the driver is the one ``url`` names (``postgresql://`` is psycopg2, as in
    SQLAlchemy). ``pgbouncer=False`` returns no options. Use it as::

        url = outbox.async_database_url(os.environ["DATABASE_URL"])
        engine = create_async_engine(url, **outbox.engine_options(url, pgbouncer=True))

    If you pass ``connect_args`` yourself, merge them into the returned ``connect_args``.
    """
    if not pgbouncer:
        return {}
    driver = (make_url(url) if isinstance(url, str) else url).get_driver_name()
    if driver == "asyncpg":
        return {
            "connect_args": {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _statement_name,
            }
        }
    if driver in ("psycopg", "psycopg_async"):
        return {"connect_args": {"prepare_threshold": None}}
    return {}
