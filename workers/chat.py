"""The chat worker: every type except ``document.``, published to Redis Pub/Sub.

``python -m workers.chat`` (or the ``outbox-chat-worker`` script). ``PUBSUB_MODE=global``
publishes to ``chat:message``; ``room`` to ``conv:{key}``. Each message is the JSON envelope
``{"id", "type", "key", "seq", "payload", "created_at"}``. A batch is published in one
pipelined round trip and acknowledged in one statement.

Order: ``ORDERING=key`` by default (in both modes): a key's messages are published in
order, one batch per key in flight across every worker, and ``seq`` (the message's position
in its key, kept for a redelivery) increases in that order, so a consumer may drop anything
at or below the last ``seq`` it saw for a key (docs/ordering.md). ``ORDERING=none``: ``seq``
is ``null``.

Failures: Redis refusing one message's channel (an ACL ``NOPERM`` for that channel) fails
that message alone, ``dead`` with the reason, and the rest of the batch is delivered.
Anything else is about Redis, not the message -- a connection error or timeout, or a reply
error about the server's state (``LOADING``, ``READONLY``, ``MASTERDOWN``, ``PUBLISH`` itself
not permitted): the batch is handed back with no attempt counted and the worker pauses (see
``outbox.runtime.worker``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

import anyio
from pydantic import AfterValidator, Field, model_validator

from outbox.primitives.extras import requires_extra

with requires_extra("chat"):
    import orjson
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoPermissionError, RedisError, ResponseError

from outbox.primitives.errors import TransportUnavailable
from outbox.primitives.messages import ClaimedMessage
from outbox.runtime.handler import DELIVERED, GiveUp, Outcome
from outbox.runtime.runner import run_worker_process
from outbox.runtime.settings import WorkerSettings

__all__ = ["ChatPublisher", "ChatSettings", "envelope", "main"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(url: str) -> str:
    if not url.startswith(_REDIS_SCHEMES):
        raise ValueError("expected redis://, rediss:// or unix:// URL")
    try:
        parse_url(url)
    except ValueError as exc:
        raise ValueError(f"not a usable Redis URL: {exc}") from None
    return url


class ChatSettings(WorkerSettings):
    """:class:`~outbox.runtime.settings.WorkerSettings` plus Redis and the channel layout."""

    redis_url: Annotated[str, AfterValidator(_redis_url)]
    """``redis://[:password@]host:port/db``; ``rediss://`` for TLS."""
    pubsub_mode: Literal["global", "room"] = "global"
    """``global``: one channel; ``room``: one channel per message key."""
    pubsub_channel: str = Field("chat:message", min_length=1)
    """The channel in global mode."""
    pubsub_room_prefix: str = "conv:"
    """Room mode publishes to this prefix + the message key."""
    redis_timeout_seconds: float = Field(5.0, gt=0, le=300)
    """Socket connect/read timeout; past it Redis counts as down."""
    exclude_type_prefixes: str = "document."
    ordering: Literal["none", "key"] = "key"

    @model_validator(mode="after")
    def _redis_gives_up_first(self) -> ChatSettings:
        # A hung Redis must count as an outage (attempts kept), not as a handler timeout.
        if self.redis_timeout_seconds >= self.handler_timeout_seconds:
            raise ValueError(
                "REDIS_TIMEOUT_SECONDS must be below HANDLER_TIMEOUT_SECONDS "
                f"({self.redis_timeout_seconds:g} >= {self.handler_timeout_seconds:g})"
            )
        return self


def envelope(message: ClaimedMessage) -> bytes:
    """The published body: ``{"id", "type", "key", "seq", "payload", "created_at"}`` as
    UTF-8 JSON (``seq``: the position in the key's order, ``null`` when unordered).

    ``created_at`` is ISO 8601 with its offset (``2026-11-22T04:05:13.364759+00:00``).
    """
    body = {
        "id": message.id,
        "type": message.type,
        "key": message.key,
        "seq": message.seq,
        "payload": message.payload,
        "created_at": message.created_at.isoformat(),
    }
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer beyond 64 bits: the standard encoder keeps it exact
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ChatPublisher:
    """Publishes a batch with one pipelined round trip (a :class:`~outbox.runtime.Handler`)."""

    def __init__(self, settings: ChatSettings) -> None:
        self.settings = settings
        # No per-read socket timeout: redis-py would arm a timer for every reply of a
        # pipeline. One deadline per round trip (fail_after below) bounds the same wait.
        self.redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_seconds,
            health_check_interval=30,
        )
        host = self.redis.connection_pool.connection_kwargs.get("host", "?")
        port = self.redis.connection_pool.connection_kwargs.get("port", "?")
        self.name = f"Redis at {settings.redis_url.split('://')[0]}://{host}:{port}"

    async def check(self) -> None:
        try:
            with anyio.fail_after(self.settings.redis_timeout_seconds):
                await self.redis.ping()
        except RedisConnectionError as exc:
            if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
                raise
            raise RedisConnectionError(
                f"{exc} The server's TLS certificate is not signed by a CA this process"
                " trusts: add ?ssl_ca_certs=/path/to/ca.crt to REDIS_URL, or set SSL_CERT_FILE"
            ) from exc

    def channel(self, message: ClaimedMessage) -> str | None:
        """Where ``message`` goes; ``None`` when room mode has no key to route by."""
        if self.settings.pubsub_mode == "global":
            return self.settings.pubsub_channel
        return None if message.key is None else self.settings.pubsub_room_prefix + message.key

    async def handle_batch(self, messages: Sequence[ClaimedMessage]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [DELIVERED] * len(messages)
        pipe = self.redis.pipeline(transaction=False)
        sent: list[tuple[int, str]] = []  # (index in messages, channel) per pipelined PUBLISH
        for index, message in enumerate(messages):
            channel = self.channel(message)
            if channel is None:
                outcomes[index] = GiveUp("PUBSUB_MODE=room needs a key; the message has none")
            else:
                pipe.publish(channel, envelope(message))
                sent.append((index, channel))
        if sent:
            try:
                with anyio.fail_after(self.settings.redis_timeout_seconds):
                    # Reply errors come back per command; connection errors raise.
                    replies = await pipe.execute(raise_on_error=False)
            except (RedisError, TimeoutError) as exc:
                raise TransportUnavailable(str(exc) or type(exc).__name__) from exc
            for (index, channel), reply in zip(sent, replies, strict=True):
                if isinstance(reply, ResponseError):
                    outcomes[index] = _refused(channel, reply)
        return outcomes

    async def aclose(self) -> None:
        await self.redis.aclose()


def _refused(channel: str, error: ResponseError) -> Outcome:
    """The outcome of one PUBLISH that Redis answered with an error.

    ``NOPERM`` for the channel is this message's own, permanent failure; any other reply
    error (``PUBLISH`` not permitted at all, ``LOADING``, ``READONLY``...) is about Redis,
    an outage for the whole batch.
    """
    text = str(error)
    if isinstance(error, NoPermissionError) and "channel" in text.lower():
        return GiveUp(f"Redis refused channel {channel!r} (check the ACL): NOPERM {text}")
    raise TransportUnavailable(f"Redis refused PUBLISH: {type(error).__name__}: {text}") from error


def main() -> None:
    """Console entry point."""
    run_worker_process("outbox-chat-worker", ChatSettings, ChatPublisher)


if __name__ == "__main__":
    main()
