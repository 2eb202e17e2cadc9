"""Local processes that outlive the controller: spawn, identify, watch and stop them.

A handle is ``"<pid>:<start time>"``: the start time (from /proc) guards against a recycled pid being
mistaken for our instance after the original died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from artifact.safeio import private_dir
from controller.errors import NeedsOperator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_children: dict[str, subprocess.Popen[bytes]] = {}  # processes this controller started, for exit codes


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return fields[19]


def handle_of(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def pid_of(handle: str) -> int:
    return int(handle.split(":", 1)[0])


# What a process the controller starts may inherit of its environment: locale, paths and the native
# libraries' thread settings. Nothing else (cloud credentials, tokens, the controller's own
# SWITCHYARD_* settings, which a service would read as its own) reaches an instance or a router.
INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH"})
INHERITED_PREFIXES = ("LC_", "OPENBLAS_", "OMP_", "MKL_")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a process the controller starts: only :data:`INHERITED` variables of the
    controller's own, this checkout importable, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# The user the service containers run as: the image's unprivileged user when the controller is root,
# else the controller's own user (who cannot give a folder away). Folders shared with the containers
# belong to that user, so no other local user can plant a route, a socket or a shadow control file.
CONTAINER_UID = 10001


def container_user() -> tuple[int, int]:
    if os.geteuid() == 0:
        return CONTAINER_UID, CONTAINER_UID
    return os.getuid(), os.getgid()


def shared_folder(path: Path, mode: int) -> Path:
    """``path`` as a folder shared with the service containers: owned by :func:`container_user`,
    writable by nobody else (``mode`` 0755 where a router container's workers must reach sockets,
    0700 otherwise), never a link."""
    path.mkdir(parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise NeedsOperator(f"{path} is not a folder (a link or a file is there): refusing to use it")
    uid, gid = container_user()
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)
    elif info.st_uid != os.geteuid():
        raise NeedsOperator(f"{path} belongs to uid {info.st_uid}, not to this user: refusing to use it")
    os.chmod(path, mode)
    return path


def private_folder(path: Path) -> Path:
    """``path`` as a folder only this user can use (:func:`artifact.safeio.private_dir`), or a
    NeedsOperator naming what is wrong: sockets and locks never go where someone else could swap them."""
    try:
        return private_dir(path)
    except OSError as exc:
        raise NeedsOperator(str(exc)) from None


def spawn(argv: Sequence[str], *, log: Path, env: dict[str, str], cwd: Path | None = None) -> str:
    """Start a process in its own session (it survives the controller), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    handle = handle_of(proc.pid)
    _children[handle] = proc
    return handle


def alive(handle: str) -> bool:
    pid, _, started = handle.partition(":")
    child = _children.get(handle)
    if child is not None and child.poll() is not None:
        return False
    return _start_time(int(pid)) == started


def exit_code(handle: str) -> int | None:
    """The exit code, if this controller started the process and it has exited."""
    child = _children.get(handle)
    return child.poll() if child is not None else None


def terminate(handle: str, *, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Ask politely, wait up to ``grace`` seconds, then kill the whole process group. Idempotent."""
    if not alive(handle):
        _reap(handle)
        return
    pid = pid_of(handle)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(handle):
        time.sleep(0.02)
    if alive(handle):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while alive(handle):
            time.sleep(0.01)
    _reap(handle)


def _reap(handle: str) -> None:
    child = _children.pop(handle, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def option(pid: int, flag: str) -> str | None:
    """The value a running process was given for ``flag`` on its command line (``--port 8001``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def group(pgid: int, name: str) -> list[int]:
    """Processes of process group ``pgid`` whose command line starts with ``name``: the workers a
    killed master left behind keep its group."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z" and command.startswith(name.encode()):
            found.append(int(entry))
    return found


def kill_group(pgid: int, name: str, wait: float = 5.0) -> None:
    """Kill them, and return once they are gone (a killed process frees its port only when it dies)."""
    for pid in group(pgid, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while group(pgid, name) and time.monotonic() < deadline:
        time.sleep(0.01)


def tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log, without per-request access lines (they drown out why a process died)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return last_lines(text, lines)


def last_lines(text: str, lines: int = 12) -> str:
    """The last lines of a service's output, without its per-request access lines."""
    kept = [line for line in text.strip().splitlines() if '"request_id"' not in line]
    return "\n".join(kept[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_user(port: int) -> str:
    """Who holds a local TCP port, for an error message: the program listening on it, or the
    outgoing connections the kernel gave it to as their own port (any port of its ephemeral range
    can be given so while nothing listens on it)."""
    listening, outgoing = set(), 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    if fields[3] == "0A":  # LISTEN
                        listening.add(f"socket:[{fields[9]}]")
                    else:
                        outgoing += 1
    owners = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and listening:
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in listening for fd in Path(f"/proc/{entry}/fd").iterdir()):
                    command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                    owners.append(f"pid {entry}: {command.decode(errors='replace')[:60]}")
    if owners:
        return "it is taken by " + "; ".join(owners[:3])
    if outgoing:
        low, high = _ephemeral_range()
        return f"{outgoing} connection(s) use it as their own port" + (
            f"; choose a port outside the kernel's ephemeral range {low}-{high}" if low <= port <= high else ""
        )
    return "it is taken by another program"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def tagged(env_key: str, prefix: str) -> dict[int, str]:
    """Processes whose environment has ``env_key=<prefix>...``: pid -> value. Children of a match are
    left out (a multi-worker service is one instance)."""
    needle = f"{env_key}={prefix}".encode()
    found: dict[int, str] = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(needle):
                pid = int(entry)
                fields = stat.rsplit(")", 1)[1].split()
                if fields[0] == "Z":
                    break
                found[pid] = item.split(b"=", 1)[1].decode()
                parents[pid] = int(fields[1])
                break
    return {pid: value for pid, value in found.items() if parents[pid] not in found}
