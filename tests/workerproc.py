"""Helpers for tests that run workers and the sidecar as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent


async def wait_until(condition: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class WorkerProcess:
    """``python -m <module>`` with exactly ``env`` (plus PATH), its JSON log in a file.

    Also runs the sidecar (``python -m sidecar``): see :meth:`wait_http`.
    """

    def __init__(
        self, module: str, env: Mapping[str, str], log_path: Path, *, port: int | None = None
    ) -> None:
        self.log_path = log_path
        self.port = port
        """The port a server process (the sidecar) listens on."""
        full_env = {"PATH": os.environ.get("PATH", ""), "LOG_FORMAT": "json", **env}
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Parsed log lines (non-JSON lines, e.g. tracebacks, are skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_for_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.events(name):
                return found[0]
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited ({self.process.returncode}):\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"no {name} event within {timeout}s:\n{self.log}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for_event("worker.ready", timeout)

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until ``GET url`` answers 200 (a server process is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}):\n{self.log}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{url} did not answer 200 within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_to_exit(module: str, env: Mapping[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run a worker that is expected to exit by itself; return (exit code, stderr)."""
    full_env = {"PATH": os.environ.get("PATH", ""), "LOG_FORMAT": "json", **env}
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr


@dataclass
class Received:
    """Envelopes a subscriber got, in arrival order, with channel and arrival time."""

    items: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [envelope["id"] for _, envelope, _ in self.items]

    async def wait_for_ids(self, expected: Collection[int], timeout: float) -> None:
        """Until every id in ``expected`` has arrived at least once (else fail)."""
        with anyio.move_on_after(timeout):
            while not set(expected) <= set(self.ids):
                await anyio.sleep(0.02)
        missing = sorted(set(expected) - set(self.ids))
        assert not missing, f"{len(missing)} never arrived, e.g. {missing[:10]}"


@asynccontextmanager
async def subscribed(redis_url: str, pattern: str) -> AsyncIterator[Received]:
    """Collect every message published to channels matching ``pattern`` while inside."""
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(pattern)
    confirmation = await pubsub.get_message(timeout=5.0)  # subscribed once Redis says so
    assert confirmation is not None and confirmation["type"] == "psubscribe", confirmation
    received = Received()

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "pmessage":
                channel = message["channel"].decode()
                received.items.append((channel, json.loads(message["data"]), time.monotonic()))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            yield received
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()
            await client.aclose()


@asynccontextmanager
async def running(worker: Any) -> AsyncIterator[Any]:
    """An in-process ``outbox.runtime.worker.Worker`` running until the block ends."""
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()
