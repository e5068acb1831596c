"""``outbox dashboard``: serve the operators' web dashboard (the ``dashboard`` extra).

The token comes from ``--token-file`` or ``$DASHBOARD_TOKEN``; without one the dashboard
is read-only. It binds 127.0.0.1 unless told otherwise (``--host 0.0.0.0`` in a container,
behind whatever guards the network). Log lines go to stderr, ``$LOG_FORMAT`` (``text``, the
default, or ``json``) at ``$LOG_LEVEL`` (default ``INFO``).
"""

from __future__ import annotations

import argparse
import os

from outbox.cli.database import target_of
from outbox.cli.exits import EXIT_OK, EXIT_USAGE, CommandError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM: exit 0)."""
    from outbox.dashboard.security import Guard, load_token
    from outbox.dashboard.server import serve  # needs the extra: imported only here
    from outbox.primitives.logs import configure_logging

    target = target_of(args)
    try:
        token = load_token(os.environ.get("DASHBOARD_TOKEN"), args.token_file)
        guard = Guard(
            token,
            read_only=args.read_only,
            require_token_for_viewing=args.require_token_for_viewing,
        )
    except (OSError, ValueError) as exc:
        raise CommandError(EXIT_USAGE, f"dashboard: {exc}") from None
    log_format = "json" if os.environ.get("LOG_FORMAT", "text").lower() == "json" else "text"
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    configure_logging(
        level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO", log_format
    )
    serve(
        target.url,
        guard,
        host=args.host,
        port=args.port,
        connect_timeout=target.connect_timeout,
    )
    return EXIT_OK
