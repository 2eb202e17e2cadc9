"""The live instance's shadow mirror, in process, against a fake candidate on a unix socket: it follows
the controller's control file, sends copies marked as shadow traffic, writes pairs in the format the
controller's evidence reads (one contract, :mod:`artifact.shadow`), and never makes the live path
wait, whatever the candidate does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from artifact.shadow import CONTROL, ELAPSED_HEADER, SHADOW_HEADER, Control
from controller.core import evidence
from service import shadow
from service.shadow import Mirror

LIVE = b"/tmp/live.sock"


def answer(label: str) -> bytes:
    return orjson.dumps({"predictions": [{"label": label, "scores": {label: 0.9, "Other": 0.1}}]})


def request(text: str) -> bytes:
    return orjson.dumps({"description": text})


Candidate = Callable[[bytes, dict[bytes, bytes]], Awaitable[tuple[int, bytes]]]


async def serve(path: Path, candidate: Candidate, seen: list[dict[bytes, bytes]]) -> asyncio.Server:
    """A minimal HTTP/1.1 candidate on ``path``: ``candidate(body, headers)`` decides each answer (status
    0: the payload is the whole response, as written)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(b":") for line in head[:-4].split(b"\r\n")[1:])
                }
                seen.append(headers)
                body = await reader.readexactly(int(headers[b"content-length"]))
                status, payload = await candidate(body, headers)
                if status == 0:  # the candidate writes the whole response itself
                    writer.write(payload)
                else:
                    writer.write(
                        b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s: 0.5\r\n\r\n%s"
                        % (status, len(payload), ELAPSED_HEADER, payload)
                    )
                await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


async def mirror_running(folder: Path, control: Control) -> tuple[Mirror, asyncio.Task[None]]:
    (folder / CONTROL).write_bytes(control.dump())
    mirror = Mirror(folder, LIVE.decode())
    task = asyncio.create_task(mirror.run())
    for _ in range(200):  # it looks at the file twice a second
        if mirror.active:
            break
        await asyncio.sleep(0.02)
    assert mirror.active, "the mirror did not follow control.json"
    return mirror, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_copies_are_marked_as_shadow_and_their_pairs_are_read_as_evidence(tmp_path: Path) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def candidate(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
        text = orjson.loads(body)["description"]
        return 200, answer("Energy" if "oil" in text else "Technology")

    async def story() -> None:
        server = await serve(tmp_path / "cand.sock", candidate, seen)
        control = Control(source=LIVE.decode(), target=str(tmp_path / "cand.sock"), records="cand.jsonl", rate=1000)
        mirror, task = await mirror_running(tmp_path, control)
        texts = ["oil and gas"] * 6 + ["software"] * 4
        for i, text in enumerate(texts):  # live said Energy every time
            mirror.offer(request(text), b"req-%d" % i, answer("Energy"), 1.0)
        for _ in range(200):
            if evidence.fold((tmp_path / "cand.jsonl").read_bytes().splitlines()).requests == 10:
                break
            await asyncio.sleep(0.05)
        await stop(task)
        server.close()

    run(story())
    assert all(headers[SHADOW_HEADER] == b"1" for headers in seen) and len(seen) == 10
    assert {headers[b"x-request-id"] for headers in seen} == {b"req-%d" % i for i in range(10)}
    found = evidence.fold((tmp_path / "cand.jsonl").read_bytes().splitlines())
    assert (found.requests, found.compared, found.rows, found.agreed) == (10, 10, 10, 6)
    assert found.cand_ms == (0.5,) * 10, "the candidate's own time, from its header"
    assert [ex.input for ex in found.examples] == ["software"] * 4, "disagreements keep their input"


def test_a_hung_candidate_never_holds_up_live_and_what_does_not_fit_is_counted(tmp_path: Path) -> None:
    seen: list[dict[bytes, bytes]] = []
    release = asyncio.Event()

    async def hung(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
        await release.wait()
        return 200, answer("Energy")

    async def story() -> None:
        server = await serve(tmp_path / "cand.sock", hung, seen)
        control = Control(
            source=LIVE.decode(), target=str(tmp_path / "cand.sock"), records="cand.jsonl", rate=1e6, timeout=0.5
        )
        mirror, task = await mirror_running(tmp_path, control)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(shadow.QUEUE_SIZE + 100):
            mirror.offer(request("oil"), b"r%d" % i, answer("Energy"), 1.0)
        assert loop.time() - started < 1.0, "offer waits for nothing"
        for _ in range(200):
            lines = (tmp_path / "cand.jsonl").read_bytes().splitlines()
            if evidence.fold(lines).errors and evidence.fold(lines).dropped:
                break
            await asyncio.sleep(0.05)
        release.set()
        await stop(task)
        server.close()

    run(story())
    found = evidence.fold((tmp_path / "cand.jsonl").read_bytes().splitlines())
    assert found.dropped >= 100 - shadow.SENDERS
    assert found.errors["no answer in 0.5 s"] >= 1


def test_a_control_that_names_another_source_is_not_followed_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    async def story() -> None:
        mirror = Mirror(tmp_path, LIVE.decode())
        (tmp_path / CONTROL).write_bytes(Control(source="/tmp/other.sock", target="/x", records="r.jsonl").dump())
        mirror._poll()
        assert not mirror.active
        (tmp_path / CONTROL).write_bytes(b'["not", "a", "control"]')
        mirror._poll()
        assert not mirror.active and not (tmp_path / "r.jsonl").exists()

    run(story())


async def offer_one_at_a_time(mirror: Mirror, records: Path, copies: int) -> None:
    """Offer ``copies`` copies, each once the one before is recorded, so that each meets its own reply."""
    for i in range(copies):
        mirror.offer(request("oil"), b"r%d" % i, answer("Energy"), 1.0)
        for _ in range(200):
            if evidence.fold(records.read_bytes().splitlines()).requests == i + 1:
                break
            await asyncio.sleep(0.05)


def test_a_chunked_answer_is_read_and_an_oversized_or_garbled_one_is_an_error_not_a_record(tmp_path: Path) -> None:
    body = answer("Energy")
    replies = iter(
        [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (shadow.MAX_ANSWER + 1) + b" " * (shadow.MAX_ANSWER + 1),
            b"SMTP ready\r\n\r\n",
        ]
    )

    async def odd(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
        return 0, next(replies)

    async def story() -> None:
        server = await serve(tmp_path / "cand.sock", odd, [])
        control = Control(source=LIVE.decode(), target=str(tmp_path / "cand.sock"), records="cand.jsonl", rate=1000)
        mirror, task = await mirror_running(tmp_path, control)
        await offer_one_at_a_time(mirror, tmp_path / "cand.jsonl", 3)
        await stop(task)
        server.close()

    run(story())
    found = evidence.fold((tmp_path / "cand.jsonl").read_bytes().splitlines())
    assert (found.requests, found.compared, found.agreed) == (3, 1, 1)
    too_large, garbled = sorted(found.errors)
    assert too_large == "bad answer: answer too large" and garbled.startswith("bad answer: illegal status line")


def test_a_connection_the_candidate_closed_while_idle_is_no_error_and_one_closed_mid_answer_is(
    tmp_path: Path,
) -> None:
    body = answer("Energy")
    whole = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    answered = 2 * shadow.SENDERS  # each sender keeps a connection: every one of them is found closed once
    replies = iter([whole] * answered + [whole[:30]])  # the last answer is cut off: the candidate died

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One answer per connection, without saying so (as a keep-alive timeout does between copies)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(next(replies))
            await writer.drain()
        writer.close()

    async def story() -> None:
        server = await asyncio.start_unix_server(handle, path=str(tmp_path / "cand.sock"))
        control = Control(source=LIVE.decode(), target=str(tmp_path / "cand.sock"), records="cand.jsonl", rate=1000)
        mirror, task = await mirror_running(tmp_path, control)
        await offer_one_at_a_time(mirror, tmp_path / "cand.jsonl", answered + 1)
        await stop(task)
        server.close()

    run(story())
    found = evidence.fold((tmp_path / "cand.jsonl").read_bytes().splitlines())
    assert (found.requests, found.compared, found.agreed) == (answered + 1, answered, answered)
    assert dict(found.errors) == {"unreachable: connection closed before the answer": 1}
