"""The built-in router as a hostile client meets it (a real router process in front of a unix-socket
upstream that echoes what reached it): requests that two HTTP parsers could read differently are
refused, slow and surplus connections are closed in bounded time, and a client cannot mark its
requests as shadow copies."""

from __future__ import annotations

import json
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from controller.drivers.host import free_port
from support import ROOT, clean_env


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = json.dumps({"headers": dict(self.headers.items()), "body": self.rfile.read(length).decode()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


class UnixEcho(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = super().get_request()
        return conn, ("local", 0)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("router")
    upstream = folder / "echo.sock"
    echo = UnixEcho(str(upstream), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    token = folder / "token"
    token.write_text("secret")
    port = free_port()
    argv = [sys.executable, "-m", "builtin_router", "--listen", f"127.0.0.1:{port}", "--admin-port", str(free_port())]
    argv += ["--token-file", str(token), "--upstream", str(upstream)]
    argv += ["--header-timeout", "2", "--body-timeout", "2", "--max-connections", "40"]
    proc = subprocess.Popen(argv, env=clean_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "builtin router on" in proc.stdout.readline()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        echo.shutdown()


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(raw)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and b"connection: close" not in received.lower():
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                if len(body) >= length:
                    break
        return received


POST = b"POST /p HTTP/1.1\r\nHost: x\r\n"

AMBIGUOUS = {
    "both framings": POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "an encoding that only contains chunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "two encodings": b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "0x in a chunk size": b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n",
    "+ in a chunk size": b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+4\r\nabcd\r\n0\r\n\r\n",
    "_ in a chunk size": b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n"
    + b"a" * 16
    + b"\r\n0\r\n\r\n",
    "a space before the colon": b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd",
    "obsolete line folding": b"GET /p HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "a bare LF inside a field": b"GET /p HTTP/1.1\r\nHost: x\r\nX-A: 1\nX-B: 2\r\n\r\n",
    "a bare CR inside a field": b"GET /p HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "two different lengths": b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    "a signed length": b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
    "an unknown version": b"GET /p HTTP/1.2\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_a_request_two_parsers_could_read_differently_is_refused(router: int, name: str) -> None:
    answer = exchange(router, AMBIGUOUS[name])
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"headers"' not in answer  # nothing reached the upstream


def test_a_well_formed_chunked_request_still_goes_through(router: int) -> None:
    raw = POST + b"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n4;ext=1\r\nabcd\r\n0\r\n\r\n"
    answer = exchange(router, raw)
    assert answer.startswith(b"HTTP/1.1 200") and b'"body": "abcd"' in answer


def test_a_clients_shadow_mark_never_reaches_the_instance(router: int) -> None:
    raw = POST + b"X-Switchyard-Shadow: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    answer = exchange(router, raw)
    assert answer.startswith(b"HTTP/1.1 200")
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert not any(k.lower() == "x-switchyard-shadow" for k in echoed["headers"])


def eof_within(conn: socket.socket, seconds: float) -> bool:
    ready, _, _ = select.select([conn], [], [], seconds)
    return bool(ready) and conn.recv(1) == b""


def test_slow_headers_are_cut_off_and_surplus_connections_closed(router: int) -> None:
    slow = [socket.create_connection(("127.0.0.1", router), timeout=30) for _ in range(40)]  # the cap
    try:
        for conn in slow:
            conn.sendall(b"GET /p HTTP/1.1\r\nX-Sl")  # a request head that never finishes
        assert exchange(router, b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5) == b""  # over the cap
        started = time.monotonic()
        for conn in slow:  # each slow client is cut off by the header timeout (2 s), not kept
            assert eof_within(conn, 15)
        assert time.monotonic() - started < 15
    finally:
        for conn in slow:
            conn.close()
    # and the router serves again
    assert exchange(router, b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_a_body_that_never_finishes_is_cut_off(router: int) -> None:
    with socket.create_connection(("127.0.0.1", router), timeout=30) as conn:
        conn.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        answer = conn.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408")
