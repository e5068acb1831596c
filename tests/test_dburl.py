"""Database URL handling: plain postgresql:// in, asyncpg out, clear errors."""

from __future__ import annotations

import pytest

from outbox import ConfigurationError, async_database_url
from outbox.primitives.urls import NOT_SHOWN, libpq_dsn, redacted_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db:5432/app",
        "postgres://app:s3cret@db:5432/app",
        "postgresql+psycopg://app:s3cret@db:5432/app",
        "postgresql+asyncpg://app:s3cret@db:5432/app",
    ],
)
def test_any_postgres_url_gets_the_asyncpg_driver(url: str) -> None:
    converted = async_database_url(url)
    assert converted.render_as_string(hide_password=False) == (
        "postgresql+asyncpg://app:s3cret@db:5432/app"
    )
    assert libpq_dsn(url) == "postgresql://app:s3cret@db:5432/app"


def test_sslmode_becomes_asyncpgs_ssl_and_stays_for_libpq() -> None:
    url = "postgresql://app@db/app?sslmode=require&application_name=x"
    assert dict(async_database_url(url).query) == {"ssl": "require", "application_name": "x"}
    assert libpq_dsn(url).endswith("?application_name=x&sslmode=require")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:pw@db/app", "expected a postgresql:// URL, got scheme 'mysql'"),
        ("not a url", "not a database URL"),
        ("://user:hunter2@host", "not a database URL: '\\(not shown"),
    ],
)
def test_bad_urls_are_named_without_their_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        async_database_url(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app@db/app", "postgresql://app:***@db/app"),
        ("postgresql://db/app?password=hunter2&x=1", "postgresql://db/app?password=***&x=1"),
        ("postgresql://a@db/app?sslpassword=hunter2", "postgresql://a:***@db/app?sslpassword=***"),
        ("postgresql://a:hunter2@[::1/app", NOT_SHOWN),  # does not parse
        ("host=db password=hunter2", NOT_SHOWN),
        ("host=db password=hunter2 application_name=https://x", NOT_SHOWN),
        ("postgresql://a@db/app?%70assword=hunter2", "postgresql://a:***@db/app?password=***"),
        (
            "postgresql://a:hunter2@db/app?application_name=x@y",
            "postgresql://a:***@db/app?application_name=x%40y",
        ),
        ("postgresql://a:hun/ter2@db/app", "postgresql://a:***@db/app"),
        ("http://admin:hunter2@sidecar:8000", "http://admin:***@sidecar:8000"),
        ("not a url", "not a url"),
    ],
)
def test_redacted_urls_never_show_a_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://a:hunter2@[::1/app", "not a database URL"),
        ("postgresql://a:hunter2@db:0/app", "port 0 is not a TCP port"),
        ("postgresql://a:hunter2@db:70000/app", "port 70000 is not a TCP port"),
        ("postgresql://a:hunter2@db/app?sslmode=sometimes", "sslmode='sometimes' is not one of"),
    ],
)
def test_malformed_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        libpq_dsn(url)
    assert "hunter2" not in str(caught.value)
