"""Worker settings from the environment (pydantic-settings), names as in the source system.

:func:`load_settings` turns any validation failure into one :class:`ConfigurationError`
whose message names each bad variable, so a worker stops at start with
``BATCH_SIZE: Input should be greater than or equal to 1 (got '0')`` instead of a traceback.
Variable names are case-insensitive; unknown variables are ignored.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.primitives.backoff import BackoffPolicy, ExponentialBackoff, FixedSchedule
from outbox.primitives.constants import DEFAULT_MAX_ATTEMPTS, MAX_CLAIM_LIMIT
from outbox.primitives.errors import ConfigurationError, InvalidArgumentError
from outbox.primitives.prefixes import type_ranges
from outbox.primitives.urls import libpq_dsn, redacted_url
from outbox.storage.frontier import DEFAULT_FULL_WALK_SECONDS, DEFAULT_LOOKBACK_SECONDS

__all__ = ["BearerToken", "WorkerSettings", "load_settings", "parse_prefixes"]

_DAY = 86_400.0


def parse_prefixes(text: str) -> tuple[str, ...]:
    """``"document., audit."`` -> ``("document.", "audit.")``; blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _postgres_url(url: str) -> str:
    libpq_dsn(url)  # raises ConfigurationError (a ValueError) naming what is wrong
    return url


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


Seconds = Annotated[float, Field(gt=0, le=_DAY)]


def _bearer_token(token: SecretStr) -> SecretStr:
    value = token.get_secret_value()
    if len(value) < 8:
        raise ValueError("must be at least 8 characters")
    if not all("!" <= c <= "~" for c in value):
        raise ValueError("must be printable ASCII without spaces (it travels in a header)")
    return token


BearerToken = Annotated[SecretStr, AfterValidator(_bearer_token)]
"""A shared secret sent as ``Authorization: Bearer ...``: 8+ printable ASCII characters."""


class WorkerSettings(BaseSettings):
    """What every worker reads. Each field is the upper-case variable of the same name."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: Annotated[str, AfterValidator(_postgres_url)]
    """PostgreSQL, as ``postgresql://user:pass@host:port/db`` (``?sslmode=`` honoured)."""
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, max_length=200)
    """Lease holder name written to ``locked_by``; host:pid by default."""
    include_type_prefixes: str = ""
    """Comma-separated type prefixes this worker takes (empty: every type)."""
    exclude_type_prefixes: str = ""
    """Comma-separated type prefixes this worker leaves alone."""
    ordering: Literal["none", "key"] = "none"
    """``key``: each key's messages are delivered in order, one batch per key in flight
    across all workers, each with its position ``seq`` (docs/ordering.md); ``none``:
    unordered. Every worker that takes a key's types must use the same setting."""
    ordering_dead: Literal["skip", "hold"] = "skip"
    """With ``ORDERING=key``, when a key's head goes ``dead``: ``skip`` moves the key on;
    ``hold`` holds the key until that message is retried or purged."""
    batch_size: int = Field(100, ge=1, le=MAX_CLAIM_LIMIT)
    """Rows per claim."""
    concurrency: int | None = Field(None, ge=1, le=10 * MAX_CLAIM_LIMIT)
    """Messages in flight at once (claimed, not yet acknowledged); default 2 x BATCH_SIZE."""
    claim_lookback_seconds: float = Field(DEFAULT_LOOKBACK_SECONDS, ge=0, le=3600)
    """A claim's walk starts where the last one found the oldest claimable row, less this
    (docs/operating.md, "Held snapshots"): covers transactions that commit this long after
    their insert."""
    claim_full_walk_seconds: float = Field(DEFAULT_FULL_WALK_SECONDS, ge=0.1, le=3600)
    """How often a claim walks from the oldest row instead (what committed later than the
    lookback is claimed within this time)."""
    poll_interval_ms: int = Field(1000, ge=10, le=3_600_000)
    """Longest idle wait between claims when no notification arrives."""
    lock_seconds: float = Field(30.0, ge=1, le=_DAY)
    """Lease length; the heartbeat extends it (every third of it) while work runs."""
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=1000)
    """Claims a message may take before it goes ``dead``."""
    handler_timeout_seconds: Seconds = 30.0
    """Longest one handler call (a batch or a message) may run before it counts as failed."""
    backoff_base_seconds: Seconds = 1.0
    """First retry delay ceiling (full-jitter exponential backoff)."""
    backoff_max_seconds: Seconds = 300.0
    """Longest retry delay."""
    backoff_schedule: str = ""
    """Fixed retry delays instead, e.g. ``60,300,900`` (the last repeats)."""
    transport_retry_max_seconds: Seconds = 30.0
    """Longest pause between tries while the transport (Redis, the sidecar) is down."""
    transport_check_seconds: Seconds = 5.0
    """When no batch has used the transport for this long, the worker checks it (the
    handler's ``check()``, bounded by ``HANDLER_TIMEOUT_SECONDS``), so ``/readyz`` tells an
    outage, and its end, even while no message flows."""
    database_timeout_seconds: Seconds = 15.0
    """Longest one statement may take; past it the database counts as unreachable."""
    reap_interval_seconds: Seconds = 5.0
    """How often expired leases are reaped."""
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=_DAY)
    """On SIGTERM/SIGINT, how long in-flight work may take to finish."""
    startup_timeout_seconds: float = Field(30.0, ge=0, le=_DAY)
    """How long start-up retries unreachable dependencies before exiting non-zero."""
    listen_notify: bool = True
    """Wake on ``LISTEN outbox_new``; false: poll only."""
    pgbouncer_transaction_mode: bool = False
    """Behind PgBouncer in transaction pooling: no LISTEN, no prepared-statement cache."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (unset: off)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics server binds."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ordering", "ordering_dead", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("include_type_prefixes", "exclude_type_prefixes")
    @classmethod
    def _prefixes(cls, value: str) -> str:
        if any("\x00" in p for p in parse_prefixes(value)):
            raise ValueError("prefixes may not contain NUL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        for name, value in self:
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{name.upper()} is not valid UTF-8 text") from None
        try:
            type_ranges(self.include, self.exclude)
        except InvalidArgumentError as exc:
            raise ValueError(f"INCLUDE_TYPE_PREFIXES/EXCLUDE_TYPE_PREFIXES: {exc}") from None
        for prefix in self.include or ():
            if any(prefix.startswith(excluded) for excluded in self.exclude or ()):
                raise ValueError(
                    f"INCLUDE_TYPE_PREFIXES: {prefix!r} is inside EXCLUDE_TYPE_PREFIXES "
                    f"({self.exclude_type_prefixes!r}), so this worker would take nothing"
                )
        return self

    @field_validator("backoff_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in parse_prefixes(value)]
        except ValueError:
            raise ValueError("expected comma-separated seconds, e.g. 60,300,900") from None
        if any(not 0 <= d <= 10 * 365 * _DAY for d in delays):
            raise ValueError("each delay must be between 0 and ten years")
        return value

    @property
    def include(self) -> tuple[str, ...] | None:
        return parse_prefixes(self.include_type_prefixes) or None

    @property
    def exclude(self) -> tuple[str, ...] | None:
        return parse_prefixes(self.exclude_type_prefixes) or None

    @property
    def max_in_flight(self) -> int:
        return self.concurrency or 2 * self.batch_size

    @property
    def ordered(self) -> bool:
        return self.ordering == "key"

    @property
    def hold_keys(self) -> bool:
        return self.ordered and self.ordering_dead == "hold"

    @property
    def listens(self) -> bool:
        return self.listen_notify and not self.pgbouncer_transaction_mode

    def backoff(self) -> BackoffPolicy:
        if schedule := parse_prefixes(self.backoff_schedule):
            return FixedSchedule([float(p) for p in schedule])
        return ExponentialBackoff(
            base=self.backoff_base_seconds,
            cap=max(self.backoff_max_seconds, self.backoff_base_seconds),
            floor=min(0.1, self.backoff_base_seconds),
        )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read ``cls`` from the environment (``overrides`` win); raise a readable error.

    Raises :class:`ConfigurationError` listing every bad or missing variable by name.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name, is_url, secret = _variable(cls, error["loc"])
            if error["type"] == "missing":
                problems.append(f"{name}: required, not set")
                continue
            message = error["msg"].removeprefix("Value error, ")
            if not name:  # a check across several variables names them in its message
                problems.append(message)
                continue
            value = error.get("input")
            if isinstance(value, str) and is_url:
                value = redacted_url(value)
            shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
            problems.append(f"{name}: {message}{shown}")
        raise ConfigurationError("bad settings: " + "; ".join(problems)) from None


def _variable(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> tuple[str, bool, bool]:
    """The variable(s) an error is about (``A (or B)`` for alias choices), whether it is a
    URL (shown without its password) and whether its value is a secret (not shown)."""
    name = "_".join(str(part) for part in loc)
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        names = [field_name, *(c for c in choices if isinstance(c, str))]
        if name in names:
            shown = " (or ".join(n.upper() for n in dict.fromkeys(names)) + ")" * (
                len(dict.fromkeys(names)) - 1
            )
            return shown, field_name.endswith("_url"), field.annotation is SecretStr
    return name.upper(), name.endswith("_url"), False
