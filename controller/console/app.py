"""The console's routes. Pages are server-rendered HTML that works without JavaScript.

    GET  /login, POST /login, POST /logout
    GET  /               overview: the slots, the router, the phase
    GET  /compare        the candidate against live: metrics, per-class changes, confusion matrices, the gate
    GET  /history        the ledger, newest first, with who did what
    GET  /confirm/{action}   a deployer confirms a deploy, a rollback or the abort of a canary or
                             watch, restated in plain words
    POST /actions/{action}   runs it: the CLI's own operation, under the same lock, as that user
    GET  /artifacts/{version}/confusion_matrix.png   only if its sha256 is in the signed manifest

Every page needs a session; actions need the deployer role (a viewer's POST is a 403) and the
session's CSRF token (a POST without it is a 403). The session's account is read again on every
request. A request whose Host is not the console's own is refused (400), and a body over the limit
is refused as its bytes arrive (413), whatever its headers say.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.console import pages
from controller.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    Throttle,
    cookie_name,
    new_token,
    same,
)
from controller.drivers.users import Accounts
from controller.errors import SwitchyardError
from controller.settings import ControllerSettings

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
SHORT_WAIT = 1.0
HASHING_AT_ONCE = 2  # scrypt costs memory and a core: logins past this are told to retry (429)
ACTIONS = ("promote", "rollback", "abort")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Guard:
    """Security headers on every answer; a request body read whole, counted as its bytes arrive, and
    refused (413) past the limit, before any route sees it (a chunked body has no length to trust)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PlainTextResponse("request body too large", status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await too_large(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay: list[MutableMapping[str, Any]] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replayed() -> MutableMapping[str, Any]:
            return replay.pop() if replay else await receive()

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
                ]
            await send(message)

        await self.app(scope, replayed, with_headers)


def allowed_hosts(settings: ControllerSettings, address: str) -> list[str]:
    """The Host header values the console answers: its own address, loopback names when it listens
    on loopback, console_url's host and the configured ones. Listening on every address with none
    configured, any host is accepted (there is no name to check against)."""
    from urllib.parse import urlsplit

    hosts = {address, *(h.strip() for h in settings.console_hosts.split(",") if h.strip())}
    if address in ("127.0.0.1", "::1", "localhost"):
        hosts |= {"127.0.0.1", "localhost", "::1", "[::1]"}
    if settings.console_url:
        hosts.add(urlsplit(settings.console_url).hostname or "")
    if address in ("0.0.0.0", "::") and not settings.console_hosts and not settings.console_url:
        return ["*"]
    return sorted(h for h in hosts if h)


def create_app(settings: ControllerSettings, address: str = "127.0.0.1") -> ASGIApp:
    accounts = Accounts(settings.run_dir)
    sessions = Sessions()
    throttle = Throttle()
    hashing = asyncio.Semaphore(HASHING_AT_ONCE)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["zip"] = zip  # a disagreement pairs each row's live and candidate labels

    def render(request: Request, template: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        flash, messages = (session.flash, list(session.flash)) if session else ([], [])
        flash.clear()
        return templates.TemplateResponse(
            request, template, {"session": session, "messages": messages, **context}, status_code=status
        )

    def cookie(request: Request, name: str) -> str:
        return cookie_name(name, request.url.scheme == "https")

    def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        tls = request.url.scheme == "https"
        response.set_cookie(
            cookie_name(name, tls), value, httponly=True, samesite="strict", secure=tls, path="/", max_age=max_age
        )

    def session_of(request: Request) -> Session | None:
        token = request.cookies.get(cookie(request, SESSION_COOKIE))
        session = sessions.get(token)
        if session is None:
            return None
        user = accounts.find(session.user.name)  # removed or changed since the login: holds at once
        if user is None:
            sessions.close(token)
            return None
        session.user = user
        return session

    async def login_page(request: Request) -> Response:
        token = request.cookies.get(cookie(request, LOGIN_COOKIE)) or new_token()
        response = render(request, "login.html", None, token=token, error=None, no_accounts=not accounts.list())
        set_cookie(request, response, LOGIN_COOKIE, token, 3600)
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        token = request.cookies.get(cookie(request, LOGIN_COOKIE)) or ""
        if not token or not same(str(form.get("token", "")), token):
            return PlainTextResponse("the login form has expired; reload the page", status_code=403)
        keys = (f"user:{name[:64]}", f"client:{request.client.host if request.client else '?'}")
        # Decided before any hashing: a key's concurrent guesses are not checked, nor any login past
        # the global cap on hashes at once.
        wait = 1.0 if hashing.locked() else throttle.admit(*keys)
        if 0 < wait <= SHORT_WAIT:  # a person who mistyped once waits a moment rather than retyping
            await asyncio.sleep(wait)
            wait = 1.0 if hashing.locked() else throttle.admit(*keys)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            error = f"too many attempts: try again in {retry} s"
            response = render(request, "login.html", None, 429, token=token, error=error)
            response.headers["Retry-After"] = str(retry)
            return response
        async with hashing:
            user = await run_in_threadpool(accounts.check, name, password)
        if user is None:
            throttle.failed(*keys)
            return render(request, "login.html", None, 401, token=token, error="wrong name or password")
        throttle.succeeded(*keys)
        response = RedirectResponse("/", status_code=303)
        set_cookie(request, response, SESSION_COOKIE, sessions.open(user), int(sessions.seconds))
        response.delete_cookie(cookie(request, LOGIN_COOKIE))
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        form = await request.form()
        if session is None or not same(str(form.get("csrf", "")), session.csrf):
            return PlainTextResponse("invalid CSRF token", status_code=403)
        sessions.close(request.cookies.get(cookie(request, SESSION_COOKIE)))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(cookie(request, SESSION_COOKIE))
        return response

    def page(template: str, gather: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            data = await run_in_threadpool(gather, settings)
            return render(request, template, session, data=data, actions=session.user.can_act)

        return endpoint

    async def confirm(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        action = request.path_params["action"]
        if action not in ACTIONS:
            return PlainTextResponse("no such action", status_code=404)
        if not session.user.can_act:
            return PlainTextResponse("viewers cannot deploy or roll back", status_code=403)
        data = await run_in_threadpool(pages.compare, settings)
        return render(request, "confirm.html", session, action=action, data=data)

    async def act(request: Request) -> Response:
        session = session_of(request)
        action = request.path_params["action"]
        form = await request.form()
        if session is None:
            return PlainTextResponse("log in first", status_code=403)
        if not same(str(form.get("csrf", "")), session.csrf):
            return PlainTextResponse("invalid CSRF token", status_code=403)
        if not session.user.can_act:
            return PlainTextResponse("viewers cannot deploy or roll back", status_code=403)
        if action not in ACTIONS:
            return PlainTextResponse("no such action", status_code=404)
        data = await run_in_threadpool(pages.compare, settings)
        target = data["status"]["rollout"] if action == "abort" else data["candidate"]
        expected = str(form.get("version", ""))
        if target is None or str(target["version"]) != expected:
            session.flash.append(f"Nothing was changed: the deployment changed since you confirmed v{expected}.")
            return RedirectResponse("/", status_code=303)
        try:
            message = await run_in_threadpool(pages.act, settings, action, f"{session.user.name} (console)")
        except SwitchyardError as exc:
            reason = str(exc).partition("\n")[0]
            return render(request, "refused.html", session, 409, action=action, reason=reason, data=data)
        session.flash.append(message)
        return RedirectResponse("/", status_code=303)

    async def confusion_matrix(request: Request) -> Response:
        if session_of(request) is None:
            return RedirectResponse("/login", status_code=303)
        name = await run_in_threadpool(pages.model_name, settings)
        try:
            version = int(request.path_params["version"])
        except ValueError:
            return PlainTextResponse("no such version", status_code=404)
        image = await run_in_threadpool(pages.report, settings, name, version, "confusion_matrix.png")
        if image is None:
            return PlainTextResponse("no signed confusion matrix for this version", status_code=404)
        return Response(image, media_type="image/png")

    app = Starlette(
        routes=[
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/", page("overview.html", pages.overview), methods=["GET"]),
            Route("/compare", page("compare.html", pages.compare), methods=["GET"]),
            Route("/history", page("history.html", pages.history), methods=["GET"]),
            Route("/confirm/{action}", confirm, methods=["GET"]),
            Route("/actions/{action}", act, methods=["POST"]),
            Route("/artifacts/{version}/confusion_matrix.png", confusion_matrix, methods=["GET"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings, address))],
    )
    return Guard(app)
