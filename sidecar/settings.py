"""Sidecar settings from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.primitives.urls import libpq_dsn
from outbox.runtime.settings import BearerToken

__all__ = ["SidecarSettings"]


def _postgres_url(url: str) -> str:
    libpq_dsn(url)  # raises a ValueError naming what is wrong
    return url


class SidecarSettings(BaseSettings):
    """Each field is the upper-case variable of the same name."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: Annotated[str, AfterValidator(_postgres_url)]
    """The database holding ``documents`` and ``document_chunks``."""
    sidecar_token: BearerToken
    """Callers must send ``Authorization: Bearer <token>`` (the workers' ``SIDECAR_TOKEN``)."""
    sidecar_host: str = "127.0.0.1"
    """Address ``python -m sidecar`` listens on (``0.0.0.0`` in a container)."""
    sidecar_port: int = Field(8000, ge=1, le=65535)
    chunk_size: int = Field(1000, ge=50, le=100_000)
    """Longest chunk, in characters."""
    chunk_overlap: int = Field(200, ge=0)
    """Characters a chunk repeats from the end of the previous one (below ``CHUNK_SIZE``)."""
    max_document_bytes: int = Field(50 * 1024 * 1024, ge=1)
    """Larger documents are refused with 422."""
    parse_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    """Longest text extraction of any one document, from when an extraction process takes
    it up (then the process is killed and the answer is 422); keep it below the workers'
    ``SIDECAR_TIMEOUT_SECONDS``."""
    max_request_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest request body; a larger one is refused with 413 before it is read (the
    parse call's body is ``{"userId": ...}``)."""
    sidecar_api_docs: bool = False
    """Serve ``/docs``, ``/redoc`` and ``/openapi.json`` (off: 404)."""
    database_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    """Longest one statement may take; past it the answer is 503."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> SidecarSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                "CHUNK_OVERLAP must be below CHUNK_SIZE"
                f" ({self.chunk_overlap} >= {self.chunk_size})"
            )
        return self
