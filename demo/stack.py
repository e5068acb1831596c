"""The demo's processes: the sidecar and the two workers, started and stopped in order.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the demo,
which then stops them in order. Each is also asked to get SIGTERM if the demo itself dies
(even by SIGKILL), and its whole process group is swept with SIGKILL after it exits, so the
sidecar's parsing processes go with it. Nothing is left running either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from devservers import die_with_parent, free_ports, stop_process

__all__ = ["CHANNEL_PREFIX", "Child", "Stack", "StartFailed", "running_stack", "start_child"]

log = logging.getLogger("demo")

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CHANNEL_PREFIX = "conv:"
"""The chat worker's ``PUBSUB_ROOM_PREFIX`` here: room ``k`` publishes on ``conv:k``."""


class StartFailed(RuntimeError):
    """A child exited or never became ready; the message carries the end of its log."""


@dataclass
class Child:
    """One started process, its log file and the URL that answers 200 once it is ready."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_url: str

    def wait_ready(self, deadline: float, checkpoint: Callable[[], None]) -> None:
        """Block until ``ready_url`` answers 200; raise :class:`StartFailed` if the process
        exits first or ``deadline`` (``time.monotonic()``) passes. ``checkpoint()`` runs
        every poll, and may raise to give up."""
        with httpx.Client(timeout=1.0) as client:
            while True:
                checkpoint()
                if self.process.poll() is not None:
                    raise StartFailed(f"{self.name} exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StartFailed(f"{self.name} was not ready after {READY_TIMEOUT:.0f} s")
                time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM, wait up to :data:`STOP_TIMEOUT` (then SIGKILL), and SIGKILL whatever is
        left of its process group (the sidecar's parsing processes)."""
        stop_process(self.process, signal.SIGTERM, STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Stack:
    """The running sidecar and workers of one demo run."""

    sidecar: Child
    chat_worker: Child
    document_worker: Child

    @property
    def children(self) -> tuple[Child, ...]:
        return (self.sidecar, self.chat_worker, self.document_worker)

    def exited(self) -> list[Child]:
        """Children that have stopped on their own (a crash: the demo reports it)."""
        return [child for child in self.children if child.process.poll() is not None]


@contextlib.contextmanager
def running_stack(
    database_url: str,
    redis_url: str,
    log_dir: Path,
    checkpoint: Callable[[], None] = lambda: None,
) -> Iterator[Stack]:
    """Start the sidecar, then both workers; yield once all three are ready; stop the workers
    (draining their in-flight work), then the sidecar, whatever happens: each stop is
    tried even if another failed. ``checkpoint()`` runs while waiting for readiness, and
    may raise to give up (``demo.stopping``).

    The chat worker publishes per room: room ``k`` on ``{CHANNEL_PREFIX}k``.
    """
    token = secrets.token_urlsafe(24)
    sidecar_port, chat_port, document_port = free_ports(3)
    common = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    started: list[Child] = []
    try:
        sidecar = _start(
            started,
            "sidecar",
            ["sidecar"],
            {**common, "SIDECAR_TOKEN": token, "SIDECAR_PORT": str(sidecar_port)},
            log_dir,
            f"http://127.0.0.1:{sidecar_port}/healthz",
        )
        worker = {**common, "METRICS_HOST": "127.0.0.1", "SHUTDOWN_GRACE_SECONDS": "5"}
        chat = _start(
            started,
            "chat-worker",
            ["workers.chat"],
            {
                **worker,
                "WORKER_ID": "demo-chat",
                "METRICS_PORT": str(chat_port),
                "REDIS_URL": redis_url,
                "PUBSUB_MODE": "room",
                "PUBSUB_ROOM_PREFIX": CHANNEL_PREFIX,
            },
            log_dir,
            f"http://127.0.0.1:{chat_port}/readyz",
        )
        document = _start(
            started,
            "document-worker",
            ["workers.document"],
            {
                **worker,
                "WORKER_ID": "demo-document",
                "METRICS_PORT": str(document_port),
                "SIDECAR_BASE_URL": f"http://127.0.0.1:{sidecar_port}",
                "SIDECAR_TOKEN": token,
            },
            log_dir,
            f"http://127.0.0.1:{document_port}/readyz",
        )
        deadline = time.monotonic() + READY_TIMEOUT
        for child in started:
            try:
                child.wait_ready(deadline, checkpoint)
            except StartFailed as exc:
                tail = child.log_tail()
                raise StartFailed(f"{exc}; the end of {child.log_path}:\n{tail}") from None
        yield Stack(sidecar, chat, document)
    finally:
        for child in reversed(started):  # the workers drain before the sidecar goes
            try:
                child.stop()
            except Exception as exc:  # the next child is stopped all the same
                log.warning("could not stop %s (pid %d): %s", child.name, child.process.pid, exc)


def _start(
    started: list[Child],
    name: str,
    module: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    ready_url: str,
) -> Child:
    child = start_child(name, module, env, log_dir, ready_url)
    started.append(child)
    return child


def start_child(
    name: str, module: list[str], env: Mapping[str, str], log_dir: Path, ready_url: str
) -> Child:
    """``python -m *module`` with ``env``, its output in ``log_dir/name.log`` (appended),
    in its own session, sent SIGTERM if this process dies. Start it from the main thread."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:  # the child keeps its own copy
        process = subprocess.Popen(
            [sys.executable, "-m", *module],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # preexec_fn only calls prctl(2); the demo starts its children before any thread.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    return Child(name, process, log_path, ready_url)
