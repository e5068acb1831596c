"""Worker settings from the environment, and the structured log format."""

from __future__ import annotations

import json
import logging

import pytest

from outbox.primitives.backoff import ExponentialBackoff, FixedSchedule
from outbox.primitives.errors import ConfigurationError
from outbox.primitives.logs import configure_logging, log_event
from outbox.runtime.settings import WorkerSettings, load_settings
from workers.chat import ChatSettings

URL = "postgresql://app:s3cret@db:5432/app"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("batch_size", "250")  # names are case-insensitive
    monkeypatch.setenv("EXCLUDE_TYPE_PREFIXES", "document.,audit.")
    monkeypatch.setenv("BACKOFF_SCHEDULE", "60, 300,900")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    config = load_settings(WorkerSettings)
    assert config.batch_size == 250
    assert config.max_in_flight == 500
    assert config.exclude == ("document.", "audit.")
    assert config.log_level == "DEBUG"
    assert config.backoff() == FixedSchedule([60.0, 300.0, 900.0])


def test_default_backoff_follows_its_settings() -> None:
    config = load_settings(
        WorkerSettings, database_url=URL, backoff_base_seconds=2, backoff_max_seconds=60
    )
    policy = config.backoff()
    assert isinstance(policy, ExponentialBackoff)
    assert (policy.base, policy.cap) == (2.0, 60.0)


def test_every_bad_variable_is_named_once_and_passwords_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:s3cret@db/app")
    monkeypatch.setenv("BATCH_SIZE", "0")
    monkeypatch.setenv("BACKOFF_SCHEDULE", "1,soon")
    monkeypatch.setenv("PUBSUB_MODE", "everywhere")
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(ChatSettings)
    message = str(caught.value)
    for name in ("DATABASE_URL", "BATCH_SIZE", "BACKOFF_SCHEDULE", "PUBSUB_MODE"):
        assert message.count(f"{name}:") == 1, message
    assert "REDIS_URL: required, not set" in message
    assert "s3cret" not in message


def test_chat_settings_default_to_leaving_documents_alone() -> None:
    config = load_settings(ChatSettings, database_url=URL, redis_url="rediss://:pw@r:6380/1")
    assert config.exclude == ("document.",)
    assert config.pubsub_mode == "global"


def test_json_logs_are_one_event_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", "json")
    try:
        log = logging.getLogger("outbox.test")
        log_event(log, logging.INFO, "message.retried", id=7, type="a.b", error='x "y"')
        log_event(log, logging.DEBUG, "message.published", id=8)  # below the level
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1
        event = json.loads(lines[0])
        assert {k: event[k] for k in ("level", "event", "id", "type", "error")} == {
            "level": "info",
            "event": "message.retried",
            "id": 7,
            "type": "a.b",
            "error": 'x "y"',
        }
        configure_logging("INFO", "text")
        log_event(log, logging.WARNING, "lease.lost", id=9, action="heartbeat", error="a b")
        line = capsys.readouterr().err.strip()
        assert line.endswith('warning lease.lost id=9 action=heartbeat error="a b"')
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_more_type_prefixes_than_a_claim_takes_stop_start_up() -> None:
    many = ",".join(f"p{n}." for n in range(101))
    with pytest.raises(ConfigurationError, match="at most 100 type prefixes"):
        load_settings(WorkerSettings, database_url="postgresql://h/db", exclude_type_prefixes=many)
