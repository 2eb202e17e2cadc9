"""The console's routes. Pages are server-rendered HTML that works without JavaScript.

    GET  /login, POST /login, POST /logout
    GET  /               overview: the slots, the router, the phase
    GET  /compare        the candidate against live: metrics, per-class changes, confusion matrices, the gate
    GET  /history        the ledger, newest first, with who did what
    GET  /confirm/{action}   a deployer confirms a deploy, a rollback or the abort of a canary or
                             watch, restated in plain words
    POST /actions/{action}   runs it: the CLI's own operation, under the same lock, as that user
    GET  /artifacts/{version}/confusion_matrix.png

Every page needs a session; actions need the deployer role (a viewer's POST is a 403) and the
session's CSRF token (a POST without it is a 403).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from controller import registry
from controller.console import pages
from controller.console.auth import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions, Throttle, new_token, same
from controller.errors import SwitchyardError, UsageError
from controller.settings import ControllerSettings
from controller.users import Accounts

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
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
    """Security headers on every answer; request bodies over the limit refused before they are read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: ControllerSettings) -> ASGIApp:
    accounts = Accounts(settings.run_dir)
    sessions = Sessions()
    throttle = Throttle()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["zip"] = zip  # a disagreement pairs each row's live and candidate labels

    def render(request: Request, template: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        flash, messages = (session.flash, list(session.flash)) if session else ([], [])
        flash.clear()
        return templates.TemplateResponse(
            request, template, {"session": session, "messages": messages, **context}, status_code=status
        )

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    async def login_page(request: Request) -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or new_token()
        response = render(request, "login.html", None, token=token, error=None, no_accounts=not accounts.list())
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        token = request.cookies.get(LOGIN_COOKIE) or ""
        if not token or not same(str(form.get("token", "")), token):
            return PlainTextResponse("the login form has expired; reload the page", status_code=403)
        keys = (f"user:{name}", f"client:{request.client.host if request.client else '?'}")
        await asyncio.sleep(throttle.delay(*keys))  # repeated wrong passwords wait longer and longer
        user = await run_in_threadpool(accounts.check, name, password)
        if user is None:
            throttle.failed(*keys)
            return render(request, "login.html", None, 401, token=token, error="wrong name or password")
        throttle.succeeded(*keys)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, sessions.open(user), httponly=True, samesite="strict", max_age=int(sessions.seconds)
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        form = await request.form()
        if session is None or not same(str(form.get("csrf", "")), session.csrf):
            return PlainTextResponse("invalid CSRF token", status_code=403)
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
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
            path = registry.version_dir(settings.models_dir, name or "", version) / "confusion_matrix.png"
        except (UsageError, ValueError):
            return PlainTextResponse("no such version", status_code=404)
        if not path.is_file():
            return PlainTextResponse("no confusion matrix for this version", status_code=404)
        return FileResponse(path, media_type="image/png")

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
        ]
    )
    return Guard(app)
