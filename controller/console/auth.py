"""Who is logged in, and proof that a form came from the console itself.

Sessions live in the console's memory (a restart logs everyone out) and are named by a random token
in an HttpOnly, SameSite=Strict cookie that expires. Each session has its own CSRF token, which every
form carries and every POST must return. The login form, which comes before any session, is
protected by a double-submitted token (a cookie and a form field that must match). Wrong passwords
are slowed down per account and per client address before any hashing: one attempt at a time per
key, and each failure doubles the wait before the next attempt is even checked, up to a limit; a
success clears it. A session names its account: the account is read again on every request, so a
removed user is logged out and a changed role holds at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.drivers.users import User

SESSION_COOKIE = "switchyard_session"
LOGIN_COOKIE = "switchyard_login"
SESSION_SECONDS = 8 * 3600
MAX_DELAY = 8.0
IN_FLIGHT = 30.0  # a key's attempt is being checked: longer than any hash, cleared when it is done
MAX_KEYS = 10_000


def cookie_name(name: str, tls: bool) -> str:
    """Over TLS a cookie gets the ``__Host-`` prefix: the browser then only accepts it with Secure,
    from this host, for every path, so a sibling subdomain cannot plant or overwrite it."""
    return f"__Host-{name}" if tls else name


@dataclass
class Session:
    user: User  # as the session began; every request replaces it by the account as it is now
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
    """Login attempts per key (an account name, a client address), decided before any hashing.

    A key has at most one attempt in flight (concurrent guesses are refused, not queued), and after
    each failure a wait that doubles (0.25 s, 0.5 s, ... up to :data:`MAX_DELAY`) before its next
    attempt is even looked at; a success clears it. At most ``max_keys`` keys are remembered (the
    least recently used is forgotten first), so a flood of names or addresses cannot grow it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Attempts] = OrderedDict()

    def _get(self, key: str) -> _Attempts:
        found = self._keys.pop(key, None) or _Attempts()
        self._keys[key] = found  # most recently used last
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return found

    def admit(self, *keys: str) -> float:
        """0 if an attempt may be checked now (its keys are then busy until :meth:`failed` or
        :meth:`succeeded`), else the seconds to wait first."""
        now = self.clock()
        wait = max((self._keys[k].not_before - now for k in keys if k in self._keys), default=0.0)
        if wait > 0:
            return wait
        for key in keys:
            self._get(key).not_before = now + IN_FLIGHT
        return 0.0

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            attempts = self._get(key)
            attempts.failures += 1
            attempts.not_before = now + min(MAX_DELAY, 0.25 * 2 ** (attempts.failures - 1))

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._keys.pop(key, None)


@dataclass
class _Attempts:
    failures: int = 0
    not_before: float = 0.0


def new_token() -> str:
    return secrets.token_urlsafe(32)
