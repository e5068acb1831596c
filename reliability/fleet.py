"""The processes under test: the sidecar (behind a :class:`FaultProxy`) and the workers.

Every process is started from the main thread (Linux sends the "parent died" signal when
the starting thread ends). A worker killed on purpose is replaced at once by a new
incarnation with a new ``WORKER_ID``, so its rows come back through the reaper.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.stack import Child, start_child
from devservers import free_ports
from reliability.faultproxy import FaultProxy

__all__ = ["Fleet", "WorkerSlot"]

CHANNEL_PREFIX = "conv:"
READY_SECONDS = 60.0


@dataclass
class WorkerSlot:
    """One place in the fleet (``chat-1``); ``child`` is its current incarnation."""

    name: str
    module: str
    env: dict[str, str]
    child: Child | None = None
    incarnation: int = 0
    worker_ids: list[str] = field(default_factory=list)
    metrics_url: str = ""

    @property
    def worker_id(self) -> str:
        return self.worker_ids[-1]


class Fleet:
    """Starts the sidecar and the workers; kills and replaces them on request."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self.database_url, self.redis_url, self.log_dir = database_url, redis_url, log_dir
        self.sidecar: Child | None = None
        self.proxy: FaultProxy | None = None
        self.slots: list[WorkerSlot] = []

    def start(self, *, chat_workers: int, document_workers: int, chat_env: dict[str, str]) -> None:
        """Start the sidecar and its proxy (if there are document workers), then the
        workers; return once all are ready."""
        token = secrets.token_urlsafe(24)
        sidecar_port, proxy_port = free_ports(2)
        base = {**os.environ, "DATABASE_URL": self.database_url, "LOG_FORMAT": "json"}
        if document_workers:
            self.sidecar = start_child(
                "sidecar",
                ["sidecar"],
                {**base, "SIDECAR_TOKEN": token, "SIDECAR_PORT": str(sidecar_port)},
                self.log_dir,
                f"http://127.0.0.1:{sidecar_port}/healthz",
            )
            self.sidecar.wait_ready(time.monotonic() + READY_SECONDS, lambda: None)
            self.proxy = FaultProxy(proxy_port, sidecar_port)
            self.proxy.start()
        worker = {**base, "METRICS_HOST": "127.0.0.1", "SHUTDOWN_GRACE_SECONDS": "5"}
        for n in range(1, chat_workers + 1):
            env = {
                **worker,
                "REDIS_URL": self.redis_url,
                "PUBSUB_MODE": "room",
                "PUBSUB_ROOM_PREFIX": CHANNEL_PREFIX,
                **chat_env,
            }
            self.slots.append(WorkerSlot(f"chat-{n}", "workers.chat", env))
        for n in range(1, document_workers + 1):
            env = {
                **worker,
                "SIDECAR_BASE_URL": f"http://127.0.0.1:{proxy_port}",
                "SIDECAR_TOKEN": token,
                "SIDECAR_TIMEOUT_SECONDS": "2",
                "HANDLER_TIMEOUT_SECONDS": "8",
                "LOCK_SECONDS": "10",
            }
            self.slots.append(WorkerSlot(f"document-{n}", "workers.document", env))
        for slot in self.slots:
            self._launch(slot)
        for slot in self.slots:
            self.wait_ready(slot)

    def chat_slots(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.module == "workers.chat"]

    def document_slots(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.module == "workers.document"]

    def kill_and_replace(self, slot: WorkerSlot) -> None:
        """SIGKILL the slot's process (no clean-up at all) and start a new incarnation."""
        assert slot.child is not None
        slot.child.process.send_signal(signal.SIGKILL)
        slot.child.process.wait()
        self._launch(slot)

    def wait_ready(self, slot: WorkerSlot) -> None:
        assert slot.child is not None
        slot.child.wait_ready(time.monotonic() + READY_SECONDS, lambda: None)

    def exited(self) -> list[str]:
        """Processes that stopped without being told to (a crash the run must report)."""
        children = [self.sidecar] + [slot.child for slot in self.slots]
        return [c.name for c in children if c is not None and c.process.poll() is not None]

    def stop(self) -> None:
        """Stop the workers (they drain), then the proxy and the sidecar."""
        for slot in self.slots:
            if slot.child is not None:
                slot.child.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.sidecar is not None:
            self.sidecar.stop()

    def _launch(self, slot: WorkerSlot) -> None:
        slot.incarnation += 1
        worker_id = f"{slot.name}.{slot.incarnation}"
        slot.worker_ids.append(worker_id)
        (port,) = free_ports(1)
        env = {**slot.env, "WORKER_ID": worker_id, "METRICS_PORT": str(port)}
        slot.metrics_url = f"http://127.0.0.1:{port}/metrics"
        slot.child = start_child(
            slot.name, [slot.module], env, self.log_dir, f"http://127.0.0.1:{port}/readyz"
        )
