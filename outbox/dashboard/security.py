"""The dashboard's safety model, in the standard library only.

* **The token** (``DASHBOARD_TOKEN`` or ``--token-file``) is the one secret. Without one the
  dashboard is read-only. It is entered once on the login page, never put in a URL, never
  logged; the comparison is constant-time.
* **Sessions**: logging in sets an ``HttpOnly``, ``SameSite=Strict`` cookie holding a
  signed session (issue time, a random id, the name the operator gave), signed with a key
  derived from the token: changing the token ends every session. Sessions last
  :data:`SESSION_SECONDS`.
* **CSRF**: every change is a ``POST`` whose form carries the session's CSRF token (an
  HMAC of the session id); a change without the session, without the token or from another
  origin (``Origin`` header) is refused with 403, and so is every change in read-only mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COOKIE_NAME",
    "SESSION_SECONDS",
    "Guard",
    "Session",
    "load_token",
    "same_origin",
]

COOKIE_NAME = "outbox_dashboard_session"
SESSION_SECONDS = 12 * 3600
MAX_NAME_LENGTH = 64


def load_token(environment_value: str | None, token_file: Path | None) -> str | None:
    """The token from ``--token-file`` (its first line) or else the environment value;
    ``None`` when neither gives one. A token shorter than 16 characters is refused."""
    token = environment_value
    if token_file is not None:
        lines = token_file.read_text(encoding="utf-8").splitlines()
        token = lines[0] if lines else ""
    if token is None:
        return None
    token = token.strip()
    if len(token) < 16:
        raise ValueError("the dashboard token must be at least 16 characters long")
    return token


@dataclass(frozen=True)
class Session:
    """A logged-in browser: who (the name given at login, may be empty) and its CSRF token."""

    id: str
    name: str
    csrf: str


class Guard:
    """Decides who may view and who may change, for one dashboard process."""

    def __init__(
        self,
        token: str | None,
        *,
        read_only: bool = False,
        require_token_for_viewing: bool = False,
    ) -> None:
        if require_token_for_viewing and token is None:
            raise ValueError("--require-token-for-viewing needs a token")
        self._token = token
        self._key = (
            None
            if token is None
            else hashlib.sha256(b"outbox-dashboard-session\x00" + token.encode()).digest()
        )
        self.read_only = read_only or token is None
        self.require_token_for_viewing = require_token_for_viewing

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the configured token (``False`` without one)."""
        if self._token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def _sign(self, purpose: str, value: str) -> str:
        assert self._key is not None
        digest = hmac.new(self._key, f"{purpose}\x00{value}".encode(), hashlib.sha256)
        return digest.hexdigest()

    def new_session(self, name: str, *, now: float | None = None) -> str:
        """A signed session cookie value for an operator who just gave the token."""
        issued = int(time.time() if now is None else now)
        clean = "".join(ch for ch in name.strip() if ch.isprintable())[:MAX_NAME_LENGTH]
        encoded = base64.urlsafe_b64encode(clean.encode()).decode().rstrip("=")
        value = f"{issued}.{secrets.token_urlsafe(16)}.{encoded}"
        return f"{value}.{self._sign('session', value)}"

    def session(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie value proves, or ``None`` (missing, forged, expired)."""
        if cookie is None or self._key is None:
            return None
        value, _, signature = cookie.rpartition(".")
        if not value or not hmac.compare_digest(signature, self._sign("session", value)):
            return None
        issued, _, rest = value.partition(".")
        random_id, _, encoded = rest.partition(".")
        clock = time.time() if now is None else now
        if not issued.isdigit() or not 0 <= clock - int(issued) <= SESSION_SECONDS:
            return None
        try:
            name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except ValueError:
            return None
        return Session(id=random_id, name=name, csrf=self._sign("csrf", random_id))

    def may_change(self, session: Session | None, csrf: str | None) -> str | None:
        """``None`` if a change by ``session`` carrying form field ``csrf`` is allowed, else
        the reason it is refused."""
        if self.read_only:
            return "the dashboard is read-only"
        if session is None:
            return "log in with the dashboard token first"
        if not csrf or not hmac.compare_digest(csrf, session.csrf):
            return "missing or wrong CSRF token: reload the page and try again"
        return None

    def may_view(self, session: Session | None) -> bool:
        return session is not None or not self.require_token_for_viewing


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """Whether a request's ``Origin`` header (absent: allowed, old browsers and tools send
    none; the CSRF token still applies) names the host it was sent to."""
    if origin is None:
        return True
    return host is not None and origin == f"{scheme}://{host}"
