"""The dashboard's web application (Starlette, Jinja templates with autoescaping).

Routes (every page server-rendered; ``/api/overview`` feeds the live overview's script):

* ``GET /`` overview; ``GET /api/overview`` its figures as JSON;
* ``GET /dead`` dead letters, filtered; ``POST /dead/confirm`` how many rows a retry or
  purge would touch; ``POST /dead/apply`` do it (audited);
* ``GET /messages/{id}``, ``GET /lookup?q=ID-or-dedupe-key`` one message;
* ``GET /audit`` the latest audited changes; ``GET|POST /login``, ``POST /logout``;
* ``GET /healthz`` liveness (no database); ``/static/...`` the package's assets.

See :mod:`outbox.dashboard.security` for who may view and change. Logs name events and
counts, never payloads, error texts, filters or the token; uvicorn's access log is off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from outbox.dashboard.forms import (
    FILTER_FIELDS,
    FormError,
    chosen_ids,
    filter_fields,
    filter_of,
    parse_form,
)
from outbox.dashboard.sampler import CHART_HEIGHT, CHART_WIDTH, Sampler, overview_json
from outbox.dashboard.security import COOKIE_NAME, SESSION_SECONDS, Guard, Session, same_origin
from outbox.primitives.errors import InvalidArgumentError
from outbox.primitives.extras import requires_extra
from outbox.primitives.logs import log_event
from outbox.storage.admin import (
    DeadFilter,
    count_dead,
    find_message,
    list_dead,
    purge_dead,
    retry_dead,
)
from outbox.storage.audit import Audit, recent_audit
from outbox.storage.execution import AsyncDB

with requires_extra("dashboard"):
    import jinja2
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

__all__ = ["DashboardConfig", "create_app"]

log = logging.getLogger("outbox.dashboard")

HERE = Path(__file__).resolve().parent
LIST_LIMIT = 200
ACTIONS = {"retry": "Retry", "purge": "Purge"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send "Origin: null"
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class DashboardConfig:
    """What one dashboard process serves: ``open_db`` yields the database handle for the
    app's lifetime (an asyncpg pool, an engine), ``allowed_hosts`` the ``Host`` headers it
    answers (DNS-rebinding protection; ``["*"]``: any)."""

    open_db: Callable[[], Any]
    guard: Guard
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]", "::1")
    secure_cookies: bool = False


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, every value: payloads and errors are user data
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["when"] = _when
    return environment


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


class Denied(Exception):
    """A request refused with ``status`` and a reason for the operator."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def create_app(config: DashboardConfig) -> Starlette:
    """The ASGI application (the database handle opens at startup, closes at shutdown)."""
    templates = _templates()
    guard = config.guard
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with config.open_db() as db:
            state["db"] = db
            state["sampler"] = Sampler(db)
            yield

    def db() -> AsyncDB:
        handle: AsyncDB = state["db"]
        return handle

    def session_of(request: Request) -> Session | None:
        return guard.session(request.cookies.get(COOKIE_NAME))

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = session_of(request)
        html = templates.get_template(template).render(
            session=session,
            read_only=guard.read_only,
            has_token=guard.has_token,
            csrf=session.csrf if session else "",
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def viewing(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """Pages: the viewer's session when the token is required for viewing; errors as
        pages."""

        async def guarded(request: Request) -> Response:
            if not guard.may_view(session_of(request)):
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "log in first"}, 401, headers=SECURITY_HEADERS)
                return RedirectResponse("/login", 303, headers=SECURITY_HEADERS)
            try:
                return await handler(request)
            except Denied as denied:
                return page(request, "error.html", denied.status, reason=denied.reason)
            except (FormError, InvalidArgumentError) as exc:
                return page(request, "error.html", 400, reason=str(exc))

        return guarded

    async def change_form(request: Request) -> tuple[Session, dict[str, list[str]]]:
        """A change's form, once the request may change rows (else :class:`Denied`)."""
        origin_ok = same_origin(
            request.headers.get("origin"), request.headers.get("host"), request.url.scheme
        )
        if not origin_ok:
            log_event(log, logging.WARNING, "dashboard.refused", reason="cross-origin")
            raise Denied(403, "a change must come from the dashboard's own pages")
        fields = parse_form(await request.body())
        session = session_of(request)
        csrf = next(iter(fields.get("csrf", [])), None)
        reason = guard.may_change(session, csrf)
        if reason is not None:
            log_event(log, logging.WARNING, "dashboard.refused", reason=reason)
            raise Denied(401 if session is None and not guard.read_only else 403, reason)
        assert session is not None
        return session, fields

    def pressed(fields: dict[str, list[str]]) -> None:
        """The list's buttons send ``do=ACTION:SCOPE`` (no script needed to tell them
        apart); the confirmation sends ``action`` and ``scope``."""
        do = next(iter(fields.pop("do", [])), None)
        if do is not None:
            action, _, scope = do.partition(":")
            fields["action"], fields["scope"] = [action], [scope]

    def selection_of(fields: dict[str, list[str]]) -> tuple[str, DeadFilter]:
        scope = (fields.get("scope") or ["matching"])[0]
        if scope == "chosen":
            ids = chosen_ids(fields)
            if not ids:
                raise FormError("choose at least one dead message")
            return scope, DeadFilter(ids=ids)
        if scope != "matching":
            raise FormError("scope: chosen or matching")
        return scope, filter_of(fields)

    def action_of(fields: dict[str, list[str]]) -> str:
        action = (fields.get("action") or [""])[0]
        if action not in ACTIONS:
            raise FormError("action: retry or purge")
        return action

    # -- pages ---------------------------------------------------------------------------

    async def overview_page(request: Request) -> Response:
        sampler: Sampler = state["sampler"]
        reading = await sampler.read()
        figures = overview_json(reading, list(sampler.points))
        return page(
            request, "overview.html", figures=figures, width=CHART_WIDTH, height=CHART_HEIGHT
        )

    async def overview_api(request: Request) -> Response:
        sampler: Sampler = state["sampler"]
        reading = await sampler.read()
        return JSONResponse(overview_json(reading, list(sampler.points)), headers=SECURITY_HEADERS)

    async def dead_page(request: Request) -> Response:
        fields = {name: request.query_params.getlist(name) for name in FILTER_FIELDS}
        selection = filter_of(fields)
        rows = await list_dead(db(), selection, limit=LIST_LIMIT)
        matching = await count_dead(db(), selection)
        return page(
            request,
            "dead.html",
            rows=rows,
            matching=matching,
            limit=LIST_LIMIT,
            filters=dict(filter_fields(selection)),
            hidden=filter_fields(selection),
        )

    async def confirm(request: Request) -> Response:
        _, fields = await change_form(request)
        pressed(fields)
        action = action_of(fields)
        scope, selection = selection_of(fields)
        count = await count_dead(db(), selection)
        hidden = [("action", action), ("scope", scope), *filter_fields(selection)]
        hidden += [("id", str(i)) for i in selection.ids or ()]
        return page(
            request,
            "confirm.html",
            action=action,
            verb=ACTIONS[action],
            count=count,
            selection=selection.describe(),
            everything=selection.is_empty,
            hidden=hidden,
        )

    async def apply(request: Request) -> Response:
        session, fields = await change_form(request)
        action = action_of(fields)
        _, selection = selection_of(fields)
        client = request.client.host if request.client else "?"
        audit = Audit(actor=f"dashboard:{session.name or 'operator'}@{client}")
        if action == "retry":
            done = (await retry_dead(db(), selection, audit=audit)).retried
        else:
            done = await purge_dead(db(), selection, audit=audit)
        log_event(
            log,
            logging.INFO,
            "dashboard.change",
            action=action,
            rows=done,
            operation=str(audit.operation),
        )
        back = None
        if selection.ids is not None and len(selection.ids) == 1 and action == "retry":
            back = f"/messages/{selection.ids[0]}"
        return page(request, "done.html", action=action, rows=done, back=back)

    async def message_page(request: Request) -> Response:
        try:
            message_id = int(request.path_params["id"])
        except ValueError:
            raise Denied(404, "no such message") from None
        message = await find_message(db(), id=message_id)
        if message is None:
            raise Denied(404, f"no message with id {message_id}")
        payload = json.dumps(message.payload, indent=2, ensure_ascii=False, sort_keys=True)
        return page(request, "message.html", m=message, payload=payload)

    async def lookup(request: Request) -> Response:
        wanted = (request.query_params.get("q") or "").strip()
        if not wanted:
            return RedirectResponse("/", 303)
        message = None
        if wanted.isdigit() and 1 <= int(wanted) < 2**63:
            message = await find_message(db(), id=int(wanted))
        if message is None:
            message = await find_message(db(), dedupe_key=wanted)
        if message is None:
            raise Denied(404, "no message with that id or dedupe key")
        return RedirectResponse(f"/messages/{message.id}", 303)

    async def audit_page(request: Request) -> Response:
        return page(request, "audit.html", records=await recent_audit(db(), limit=100))

    async def login_page(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", failed=False)
        fields = parse_form(await request.body())
        token = (fields.get("token") or [""])[0]
        name = (fields.get("name") or [""])[0]
        if not guard.token_matches(token):
            log_event(log, logging.WARNING, "dashboard.login_failed")
            return page(request, "login.html", 401, failed=True)
        log_event(log, logging.INFO, "dashboard.login")
        response = RedirectResponse("/", 303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            guard.new_session(name),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=config.secure_cookies,
        )
        return response

    async def logout(request: Request) -> Response:
        await change_form(request)
        response = RedirectResponse("/", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE_NAME)
        return response

    async def healthz(_: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    routes = [
        Route("/", viewing(overview_page)),
        Route("/api/overview", viewing(overview_api)),
        Route("/dead", viewing(dead_page)),
        Route("/dead/confirm", viewing(confirm), methods=["POST"]),
        Route("/dead/apply", viewing(apply), methods=["POST"]),
        Route("/messages/{id}", viewing(message_page)),
        Route("/lookup", viewing(lookup)),
        Route("/audit", viewing(audit_page)),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", viewing(logout), methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
