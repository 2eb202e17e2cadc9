"""Console accounts: names, roles and password hashes in ``<run dir>/users.json`` (owner-only).

Roles: a *viewer* sees everything and changes nothing; a *deployer* may also deploy and roll back.
Passwords are hashed with scrypt (memory-hard and slow on purpose: about 50 ms each here) with a
random salt per account, and compared in constant time. They are never taken from a command-line
argument: ``release users add`` reads them from a prompt, or from standard input when it is not a
terminal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from artifact.safeio import read_capped
from controller.errors import UsageError

ROLES = ("viewer", "deployer")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
MIN_PASSWORD = 8
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MAX_ACCOUNTS_BYTES = 1 << 20


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_act(self) -> bool:
        return self.role == "deployer"


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)


class Accounts:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "users.json"

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(read_capped(self.path, MAX_ACCOUNTS_BYTES))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.path} cannot be read ({exc}); fix or remove it") from None
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".users-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, self.path)

    def add(self, name: str, role: str, password: str) -> None:
        if not NAME.fullmatch(name):
            raise UsageError(f"user name {name!r}: lowercase letters, digits, '_', '.', '-'; at most 32")
        if role not in ROLES:
            raise UsageError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise UsageError(f"the password must have at least {MIN_PASSWORD} characters")
        salt = secrets.token_bytes(16)
        data = self._load()
        data[name] = {
            "role": role,
            "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(_hash(password, salt)).decode(),
        }
        self._save(data)

    def remove(self, name: str) -> None:
        data = self._load()
        if name not in data:
            raise UsageError(f"no user {name!r}")
        del data[name]
        self._save(data)

    def find(self, name: str) -> User | None:
        """The account as it is now (None once removed): sessions look it up on every request."""
        entry = self._load().get(name)
        return User(name, entry["role"]) if entry else None

    def list(self) -> list[User]:
        return [User(name, entry["role"]) for name, entry in sorted(self._load().items())]

    def check(self, name: str, password: str) -> User | None:
        """The user, if the password is right. A wrong name costs the same as a wrong password."""
        entry = self._load().get(name)
        salt = base64.b64decode(entry["salt"]) if entry else b"\0" * 16
        digest = _hash(password, salt)
        if entry is None or not hmac.compare_digest(digest, base64.b64decode(entry["hash"])):
            return None
        return User(name, entry["role"])
