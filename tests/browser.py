"""A real headless Chromium driven by selenium, and a local webhook receiver, for the console's stories."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30.0  # a page that waits on a deploy on two busy cores


def chrome() -> webdriver.Chrome:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("BROWSER ABSENT: no chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(options=options, service=Service(driver))


class Page:
    """One browser, on the console at ``base``."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path | None) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    def open(self, path: str) -> Page:
        self.driver.get(self.base + path)
        return self

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "main").text)

    def click(self, css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def link(self, words: str) -> None:
        self.driver.find_element(By.PARTIAL_LINK_TEXT, words).click()

    def wait_for(self, words: str) -> str:
        """Wait until the page shows ``words`` (after a form was sent), and return its text."""

        def shown(driver: webdriver.Chrome) -> bool:
            try:
                return words in driver.find_element(By.TAG_NAME, "main").text
            except WebDriverException:  # read while the next page replaced it: look again
                return False

        WebDriverWait(self.driver, WAIT).until(shown)
        return self.text()

    def log_in(self, user: str, password: str) -> str:
        self.open("/login")
        self.driver.find_element(By.NAME, "user").send_keys(user)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.click("main button[type=submit]")
        WebDriverWait(self.driver, WAIT).until(
            lambda d: "/login" not in d.current_url or d.find_elements(By.CLASS_NAME, "error")
        )
        return self.text()

    def buttons(self) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "main a.button, main form button")]

    def cookie(self, name: str) -> str:
        return str(self.driver.get_cookie(name)["value"])

    def csrf(self) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, "header input[name=csrf]").get_attribute("value"))

    def images_loaded(self) -> bool:
        return bool(
            self.driver.execute_script(
                "return [...document.images].length > 0 && [...document.images].every(i => i.naturalWidth > 0)"
            )
        )

    def shot(self, name: str, full: bool = False) -> None:
        """A screenshot for the README, when SCREENSHOTS_DIR asks for them (scripts/screenshots)."""
        if self.shots is None:
            return
        self.shots.mkdir(parents=True, exist_ok=True)
        if full:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(1280, max(900, int(height)))
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        self.driver.set_window_size(1280, 900)


@contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that keeps the JSON bodies posted to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
