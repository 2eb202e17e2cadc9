"""A small asyncio HTTP/1.1 reverse proxy: the built-in router where nginx is absent.

``python -m builtin_router --listen 127.0.0.1:8000 --admin-port 9001 --token-file F --upstream S``

- Clients keep their connections alive across flips: a flip only changes where the *next* request goes.
- Upstreams are unix sockets with a small keep-alive pool each. A pooled connection the instance has
  just closed is retried once on a fresh connection, but only if no byte of a response had arrived
  (the request cannot have been processed twice in a way the client sees).
- A canary: ``weight`` percent of requests (each drawn at random) go to the ``canary`` upstream.
- The admin endpoint (``GET``/``PUT /upstream``: ``{"upstream": S, "canary": S or null, "weight": 0-100}``)
  listens on 127.0.0.1 only and wants the bearer token.
- SIGTERM: stop accepting, let in-flight requests finish (bounded), exit 0.
- Clients are held to RFC 9112's strict reading: one exact ``Transfer-Encoding: chunked`` or one
  ``Content-Length`` (never both), hex-digit chunk sizes, field names without space before the colon,
  no obsolete line folding, no bare CR or LF: anything else is a 400 and the connection is closed,
  so no request is read one way here and another way by the instance. A request head must arrive
  within ``--header-timeout`` seconds (idle keep-alive included) and its body within
  ``--body-timeout``; past ``--max-connections`` clients a new connection is closed at once.
- ``X-Switchyard-Shadow`` from a client is dropped: only the live instance marks shadow copies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builtin_router import HEALTH_PATH

HEALTH = HEALTH_PATH.encode()
HEADER_TIMEOUT = 15.0
BODY_TIMEOUT = 30.0
MAX_CONNECTIONS = 1024
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
UPSTREAM_TIMEOUT = 60.0
POOL_SIZE = 64
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"x-switchyard-shadow",  # only the live instance may mark a request as a shadow copy
    }
)
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UpstreamError(Exception):
    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


Headers = list[tuple[bytes, bytes]]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _error(status: int, code: str, message: str) -> tuple[int, Headers, bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    return status, [(b"content-type", b"application/json")], body


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, Headers] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ClientError(400, "incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise ClientError(400, "request head too large") from None
    request_line, _, header_block = raw[:-4].partition(b"\r\n")
    return request_line, _parse_header_block(header_block, strict=True)


def _get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _framing(headers: Headers) -> tuple[bool, int]:
    """(chunked, content length) as RFC 9112 section 6 reads them, or a 400 for anything ambiguous."""
    encodings = [v for k, v in headers if k == b"transfer-encoding"]
    lengths = [v for k, v in headers if k == b"content-length"]
    if encodings:
        if lengths:
            raise ClientError(400, "both Transfer-Encoding and Content-Length")
        if len(encodings) != 1 or encodings[0].lower() != b"chunked":
            raise ClientError(400, "only Transfer-Encoding: chunked is accepted")
        return True, 0
    if not lengths:
        return False, 0
    if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        raise ClientError(400, "bad Content-Length")
    return False, int(lengths[0])


async def _read_body(reader: asyncio.StreamReader, headers: Headers, limit: int) -> bytes:
    chunked, length = _framing(headers)
    if chunked:
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            digits = line[:-2].split(b";", 1)[0]
            if not CHUNK_SIZE.fullmatch(digits):
                raise ClientError(400, "bad chunk size")
            length = int(digits, 16)
            if length == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            size += length
            if size > limit:
                raise ClientError(413, f"body over {limit} bytes")
            chunks.append(await reader.readexactly(length))
            if await reader.readexactly(2) != b"\r\n":
                raise ClientError(400, "chunk data not followed by CRLF")
    if length > limit:
        raise ClientError(413, f"body over {limit} bytes")
    return await reader.readexactly(length)


@dataclass(frozen=True)
class Limits:
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


class Proxy:
    def __init__(self, upstream: str | None, token: str, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.upstream = upstream
        self.canary: str | None = None
        self.weight = 0  # percent of requests to the canary
        self.token = token
        self.pools: dict[str, list[Conn]] = {}
        self.in_flight = 0
        self.clients: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------------ upstream side

    async def _connect(self, upstream: str) -> tuple[Conn, bool]:
        pool = self.pools.get(upstream)
        while pool:
            reader, writer = pool.pop()
            if not reader.at_eof() and not writer.is_closing():
                return (reader, writer), True
            writer.close()
        reader, writer = await asyncio.open_unix_connection(upstream, limit=MAX_HEAD)
        return (reader, writer), False

    def _release(self, upstream: str, conn: Conn) -> None:
        pool = self.pools.setdefault(upstream, [])
        if upstream in (self.upstream, self.canary) and len(pool) < POOL_SIZE:
            pool.append(conn)
        else:
            conn[1].close()

    async def _exchange(self, conn: Conn, request: bytes, method: bytes) -> tuple[int, Headers, bytes, bool]:
        reader, writer = conn
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise UpstreamError("connection closed", before_response=not exc.partial) from exc
        except (OSError, asyncio.LimitOverrunError) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__, before_response=True) from exc
        try:
            status_line, _, header_block = raw[:-4].partition(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            head = _parse_header_block(header_block)
            reusable = (_get(head, b"connection") or b"").lower() != b"close"
            if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
                body = b""
            elif _get(head, b"content-length") is not None or _get(head, b"transfer-encoding") is not None:
                body = await _read_body(reader, head, 1 << 30)
            else:
                body = await reader.read()
                reusable = False
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, ClientError) as exc:
            raise UpstreamError(f"broken response: {exc}", before_response=False) from exc
        return status, head, body, reusable

    async def forward(
        self, method: bytes, target: bytes, headers: Headers, body: bytes, peer: str
    ) -> tuple[int, Headers, bytes]:
        upstream = self.upstream
        if self.canary is not None and random.random() * 100 < self.weight:
            upstream = self.canary
        if upstream is None:
            return _error(503, "no_upstream", "the router has no upstream yet")
        out = [method + b" " + target + b" HTTP/1.1"]
        out.extend(k + b": " + v for k, v in headers if k not in HOP_BY_HOP)
        out.append(b"content-length: " + str(len(body)).encode())
        out.append(b"x-forwarded-for: " + peer.encode())
        request = b"\r\n".join(out) + b"\r\n\r\n" + body
        for attempt in (1, 2):
            try:
                conn, reused = await self._connect(upstream)
            except OSError as exc:
                return _error(502, "bad_gateway", f"cannot reach the model instance: {exc.strerror or exc}")
            try:
                status, head, payload, reusable = await asyncio.wait_for(
                    self._exchange(conn, request, method), UPSTREAM_TIMEOUT
                )
            except UpstreamError as exc:
                conn[1].close()
                if reused and exc.before_response and attempt == 1:
                    continue  # the instance closed an idle pooled connection: try a fresh one
                return _error(502, "bad_gateway", f"the model instance failed: {exc}")
            except TimeoutError:
                conn[1].close()
                return _error(504, "gateway_timeout", "the model instance did not answer in time")
            if reusable:
                self._release(upstream, conn)
            else:
                conn[1].close()
            return status, [(k, v) for k, v in head if k not in HOP_BY_HOP], payload
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ client side

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= self.limits.max_connections:
            writer.close()  # over the cap: refused before a byte is read
            return
        self.clients.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        try:
            while True:
                try:
                    head = await asyncio.wait_for(_read_head(reader), self.limits.header_timeout)
                except TimeoutError:
                    return  # a slow or idle client: its connection is closed
                except ClientError as exc:
                    await self._respond(writer, *_error(exc.status, "bad_request", str(exc)), keep_alive=False)
                    return
                if head is None:
                    return
                request_line, headers = head
                self.in_flight += 1
                try:
                    parts = request_line.split(b" ")
                    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or parts[2] not in VERSIONS or not parts[1]:
                        await self._respond(writer, *_error(400, "bad_request", "bad request line"), keep_alive=False)
                        return
                    method, target, version = parts
                    conn_header = (_get(headers, b"connection") or b"").lower()
                    keep_alive = (version == b"HTTP/1.1" and conn_header != b"close") or conn_header == b"keep-alive"
                    try:
                        body = await asyncio.wait_for(_read_body(reader, headers, MAX_BODY), self.limits.body_timeout)
                    except ClientError as exc:
                        await self._respond(writer, *_error(exc.status, "bad_request", str(exc)), keep_alive=False)
                        return
                    except TimeoutError:
                        await self._respond(
                            writer, *_error(408, "timeout", "the body came too slowly"), keep_alive=False
                        )
                        return
                    if target == HEALTH:
                        response = 200, [(b"content-type", b"application/json")], b'{"router": "builtin"}'
                    else:
                        response = await self.forward(method, target, headers, body, peer_ip)
                    await self._respond(writer, *response, keep_alive=keep_alive)
                finally:
                    self.in_flight -= 1
                if not keep_alive:
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self.clients.discard(writer)
            writer.close()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, headers: Headers, body: bytes, *, keep_alive: bool
    ) -> None:
        lines = [b"HTTP/1.1 " + str(status).encode() + b" " + REASONS.get(status, b"")]
        lines.extend(k + b": " + v for k, v in headers)
        lines.append(b"content-length: " + str(len(body)).encode())
        if not keep_alive:
            lines.append(b"connection: close")
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()

    # ------------------------------------------------------------------ admin side

    def _routing(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "canary": self.canary, "weight": self.weight}

    async def handle_admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await _read_head(reader)
            if head is None:
                return
            request_line, headers = head
            body = await _read_body(reader, headers, 64 * 1024)
            method, target, _ = request_line.split(b" ", 2)
            auth = (_get(headers, b"authorization") or b"").decode(errors="replace")
            out: dict[str, Any]
            if not hmac.compare_digest(auth, f"Bearer {self.token}"):
                status, out = 401, {"error": {"code": "unauthorized", "message": "bad or missing token"}}
            elif target != b"/upstream":
                status, out = 404, {"error": {"code": "not_found", "message": "only /upstream lives here"}}
            elif method == b"GET":
                status, out = 200, self._routing()
            elif method == b"PUT":
                wanted = json.loads(body)
                upstream, canary, weight = wanted.get("upstream"), wanted.get("canary"), wanted.get("weight", 0)
                if not isinstance(upstream, str) or not upstream.startswith("/"):
                    status, out = 422, {"error": {"code": "invalid", "message": "upstream must be a socket path"}}
                elif canary is not None and not (isinstance(canary, str) and canary.startswith("/")):
                    status, out = 422, {"error": {"code": "invalid", "message": "canary must be a socket path"}}
                elif not isinstance(weight, int) or not 0 <= weight <= 100:
                    status, out = 422, {"error": {"code": "invalid", "message": "weight must be 0 to 100"}}
                else:
                    self.upstream, self.canary, self.weight = upstream, canary, weight if canary else 0
                    for path in [p for p in self.pools if p not in (upstream, canary)]:
                        for _, idle in self.pools.pop(path):
                            idle.close()
                    status, out = 200, self._routing()
            else:
                status, out = 405, {"error": {"code": "method_not_allowed", "message": "GET or PUT"}}
            payload = json.dumps(out).encode()
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status, len(payload))
                + payload
            )
            await writer.drain()
        except (OSError, ValueError, ClientError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _parse_header_block(raw: bytes, *, strict: bool = False) -> Headers:
    """Header fields, lower-cased names. ``strict`` (a client's request) refuses what RFC 9112 says a
    server must refuse or must not pass on: space before the colon, obsolete line folding, a name that
    is not a token, a bare CR, LF or NUL in a value."""
    headers: Headers = []
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise ClientError(400, "malformed header line")
        if strict and (not TOKEN.fullmatch(name) or any(c in value for c in (b"\r", b"\n", b"\0"))):
            raise ClientError(400, "malformed header line")
        headers.append((name.strip().lower(), value.strip(b" \t")))
    return headers


async def serve(args: argparse.Namespace) -> int:
    token = Path(args.token_file).read_text().strip()
    proxy = Proxy(args.upstream, token, Limits(args.header_timeout, args.body_timeout, args.max_connections))
    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(
        proxy.handle_client, host or "127.0.0.1", int(port), backlog=4096, limit=MAX_HEAD
    )
    admin = await asyncio.start_server(proxy.handle_admin, "127.0.0.1", args.admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    print(f"builtin router on {args.listen} -> {args.upstream}; admin on 127.0.0.1:{args.admin_port}", flush=True)
    await stop.wait()
    server.close()
    admin.close()
    deadline = loop.time() + args.grace
    while proxy.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for writer in list(proxy.clients):
        writer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m builtin_router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", required=True, help="host:port for clients")
    parser.add_argument("--admin-port", type=int, required=True, help="admin port on 127.0.0.1")
    parser.add_argument("--token-file", required=True, help="file holding the admin bearer token")
    parser.add_argument("--upstream", help="initial upstream unix socket path")
    parser.add_argument("--pid-file", help="write the pid here once listening")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight requests on SIGTERM")
    parser.add_argument(
        "--header-timeout", type=float, default=HEADER_TIMEOUT, help="seconds a request head (or an idle wait) may take"
    )
    parser.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT, help="seconds a request body may take")
    parser.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help="client connections at once; more are closed"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(args))
    return 0
