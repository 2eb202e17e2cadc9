"""Who is logged in, and proof that a form came from the console itself.

Sessions live in the console's memory (a restart logs everyone out) and are named by a random token
in an HttpOnly, SameSite=Strict cookie that expires. Each session has its own CSRF token, which every
form carries and every POST must return. The login form, which comes before any session, is
protected by a double-submitted token (a cookie and a form field that must match). Wrong passwords
are slowed down per account and per client address: each failure doubles the wait before the next
attempt is even checked, up to a limit, and a success clears it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from controller.users import User

SESSION_COOKIE = "switchyard_session"
LOGIN_COOKIE = "switchyard_login"
SESSION_SECONDS = 8 * 3600
MAX_DELAY = 8.0


@dataclass
class Session:
    user: User
    csrf: str
    expires: float
    flash: list[str] = field(default_factory=list)  # one-time messages for the next page


class Sessions:
    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._by_token: dict[str, Session] = {}

    def open(self, user: User) -> str:
        token = secrets.token_urlsafe(32)
        self._by_token[token] = Session(user, secrets.token_urlsafe(32), time.monotonic() + self.seconds)
        return token

    def get(self, token: str | None) -> Session | None:
        session = self._by_token.get(token or "")
        if session is not None and session.expires < time.monotonic():
            del self._by_token[token or ""]
            return None
        return session

    def close(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Throttle:
    """Failures per key (an account name, a client address) and the wait they have earned."""

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}

    def delay(self, *keys: str) -> float:
        worst = max((self._failures.get(key, 0) for key in keys), default=0)
        return 0.0 if worst == 0 else min(MAX_DELAY, 0.25 * 2 ** (worst - 1))

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._failures[key] = self._failures.get(key, 0) + 1

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def new_token() -> str:
    return secrets.token_urlsafe(32)
