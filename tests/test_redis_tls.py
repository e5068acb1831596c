"""The chat worker (a real process) against a real Redis with TLS and ACL users, its
certificates made here with ``openssl`` (docs/workers.md, "Redis with TLS and ACL users").

The worker connects as a least-privilege user (``+publish +ping`` on ``chat:*``/``conv:*``)
and trusts the test's CA through ``?ssl_ca_certs=`` or ``SSL_CERT_FILE``; without the CA,
start-up fails with a message that says what to set.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine

from devservers import die_with_parent, free_port
from outbox import NewMessage, enqueue_many
from outbox.runtime.runner import EXIT_UNREACHABLE
from tests.components import find_binary, missing
from tests.workerproc import WorkerProcess, run_to_exit, subscribed

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CHAT = "workers.chat"
PASSWORD = "s3cret-tls-pw"
ADMIN_PASSWORD = "admin-tls-pw"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    certs: Path

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def url(self, user: str, password: str, query: str = "") -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0{query}"


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(
        [find_binary("openssl", "apt-get install openssl"), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def make_certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(folder, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=outbox test CA")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(folder, "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=outbox test {name}")  # fmt: skip
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                 "-extfile", "san.ext")  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """``redis-server`` with TLS only (no plain port) and two ACL users: ``admin`` (all) and
    ``outbox`` (``PING`` and ``PUBLISH`` to the chat worker's channels, nothing else)."""
    binary = find_binary("redis-server", "apt-get install redis-server", accept=_has_tls)
    certs = tmp_path_factory.mktemp("redis-tls")
    make_certificates(certs)
    port = free_port()
    (certs / "redis.conf").write_text(
        "port 0\n"
        "bind 127.0.0.1\n"
        f"tls-port {port}\n"
        f"tls-cert-file {certs / 'server.crt'}\n"
        f"tls-key-file {certs / 'server.key'}\n"
        f"tls-ca-cert-file {certs / 'ca.crt'}\n"
        "tls-auth-clients optional\n"
        'save ""\n'
        "appendonly no\n"
        f"dir {certs}\n"
        "user default off\n"
        f"user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
        f"user outbox on >{PASSWORD} resetchannels &chat:* &conv:* -@all +publish +ping\n"
    )
    log = certs / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, str(certs / "redis.conf")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    server = TlsRedis(port, certs)
    try:
        _wait_for_tls_redis(server, process, log)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def _has_tls(binary: str) -> bool:
    """Whether ``binary`` is linked with OpenSSL (a build that can serve TLS)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return True  # cannot tell: let the server's own start-up say
    linked = subprocess.run([ldd, binary], capture_output=True, text=True, check=False)
    return "libssl" in linked.stdout


def _wait_for_tls_redis(server: TlsRedis, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")
            if "tls-port" in text or "TLS" in text:
                missing(f"this redis-server cannot serve TLS (built without it):\n{text[-500:]}")
            raise AssertionError(f"redis-server exited ({process.returncode}):\n{text}")
        client = redis.Redis.from_url(server.url("admin", ADMIN_PASSWORD), ssl_ca_certs=server.ca)
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
        finally:
            client.close()
    raise AssertionError(f"redis-server did not answer TLS on {server.port}")


@pytest.fixture
def chat_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "WORKER_ID": "chat-tls",
        "POLL_INTERVAL_MS": "200",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }


@pytest.mark.parametrize("trust", ["ssl_ca_certs", "SSL_CERT_FILE"])
async def test_chat_worker_publishes_over_tls_as_a_least_privilege_acl_user(
    tls_redis: TlsRedis,
    chat_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
    trust: str,
) -> None:
    if trust == "ssl_ca_certs":
        env = {"REDIS_URL": tls_redis.url("outbox", PASSWORD, f"?ssl_ca_certs={tls_redis.ca}")}
    else:
        env = {"REDIS_URL": tls_redis.url("outbox", PASSWORD), "SSL_CERT_FILE": str(tls_redis.ca)}
    admin_url = tls_redis.url("admin", ADMIN_PASSWORD, f"?ssl_ca_certs={tls_redis.ca}")
    async with subscribed(admin_url, "chat:*") as received:
        worker = WorkerProcess(CHAT, {**chat_env, **env}, tmp_path / "chat.log")
        try:
            worker.wait_ready()
            async with engine.begin() as conn:
                ids = await enqueue_many(
                    conn, [NewMessage("message.created", {"n": n}, key="r") for n in range(20)]
                )
            await received.wait_for_ids(ids, timeout=20)
        finally:
            worker.stop()
    assert {channel for channel, _, _ in received.items} == {"chat:message"}
    assert PASSWORD not in worker.log


def test_without_the_ca_start_up_fails_saying_what_to_set(
    tls_redis: TlsRedis, chat_env: dict[str, str]
) -> None:
    env = {
        **chat_env,
        "REDIS_URL": tls_redis.url("outbox", PASSWORD),
        "STARTUP_TIMEOUT_SECONDS": "1",
    }
    code, stderr = run_to_exit(CHAT, env)
    assert code == EXIT_UNREACHABLE, stderr
    assert "CERTIFICATE_VERIFY_FAILED" in stderr, stderr
    assert "ssl_ca_certs" in stderr and "SSL_CERT_FILE" in stderr, stderr
    assert "Traceback" not in stderr
    assert PASSWORD not in stderr
