"""Webhooks: a small JSON event, posted to each configured URL, when a candidate is staged and waits
for a decision, when the gate refuses one, on a deploy and on a rollback. Each post has a short
timeout; a failure is reported as a warning and never blocks or fails a release.

URLs come from ``--notify URL`` (repeatable), ``SWITCHYARD_NOTIFY`` (comma-separated) and the file
``<run dir>/notify.urls`` (one per line).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

TIMEOUT = 2.0


def urls(configured: str, run_dir: Path) -> list[str]:
    found = [u.strip() for u in configured.split(",") if u.strip()]
    with contextlib.suppress(FileNotFoundError):
        found += [line.strip() for line in (run_dir / "notify.urls").read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(found))


class Notifier:
    def __init__(self, targets: list[str], console_url: str | None, warn: Callable[[str], None]) -> None:
        self.targets = targets
        self.console_url = console_url.rstrip("/") if console_url else None
        self.warn = warn

    def send(self, event: str, page: str, **fields: Any) -> None:
        if not self.targets:
            return
        body = {"event": event, "at": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
        if self.console_url:
            body["link"] = self.console_url + page
        for url in self.targets:
            try:
                response = httpx.post(url, json=body, timeout=TIMEOUT)
            except httpx.HTTPError as exc:
                self.warn(f"warning: could not notify {url}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code >= 300:
                self.warn(f"warning: {url} answered the {event} notification with {response.status_code}")
