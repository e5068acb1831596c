"""Exit codes of the ``outbox`` CLI, and the error that carries one."""

from __future__ import annotations

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_TABLE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "IN_FLIGHT",
    "CommandError",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NO_TABLE = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    unexpected error (--debug shows the traceback)
  2    bad usage, argument or setting (the message names it), including a missing
       DATABASE_URL and a database that rejects the connection (login, database name)
  3    PostgreSQL unreachable (refused, timed out, connection lost)
  4    PostgreSQL reachable but the outbox table is missing: run `outbox migrate`
  130  interrupted (Ctrl-C); `outbox top` exits 0 on Ctrl-C, its normal way out"""


IN_FLIGHT = "(and the batch in flight, if its commit got through: batches apply whole)"
"""What an interrupted batched command adds to its count: the last batch's statement may
have committed on the server after the client stopped listening."""


class CommandError(Exception):
    """Stop the command: print ``outbox: <message>`` to stderr and exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
