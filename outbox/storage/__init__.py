"""Everything that touches the ``outbox`` table: the only package that builds SQL.

``schema`` (the table), ``statements`` (every Core statement), ``execution`` (running them on
any handle), ``enqueue`` (producers), ``claims`` (claim, acknowledge, reap), ``admin`` and
``stats`` (operators), ``pool`` (the asyncpg pool the runtime uses) and ``migrate`` (Alembic).
Builds on :mod:`outbox.primitives` only.
"""
