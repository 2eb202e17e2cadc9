"""Reading and writing files where someone else may have put something: no links, no devices, caps.

The models folder, the keys folder and the run dir can be written by more people (or containers)
than the process that reads them. A file there that is a symlink to ``/dev/zero``, a FIFO, or a
link to the signing key must be refused before a byte of it is read, and nothing is read without a
cap on its size. :func:`read_capped` is the one way Switchyard reads such a file: opened with
``O_NOFOLLOW`` (a symlink in the last component is refused), ``O_NONBLOCK`` (a FIFO cannot hang the
open), then ``fstat`` on the open descriptor must say "regular file" no larger than the cap.

:func:`write_private` creates a file that did not exist (``O_EXCL``, no link followed) with the mode
given, so a planted file or link at that name makes it fail rather than write through.

:func:`private_dir` makes (or accepts) a folder only its owner can use: 0700, owned by this user,
not a symlink. That is the rule for every folder that holds sockets, locks or secrets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

# Caps on what Switchyard reads from a folder others may write (documented in docs/security.md).
MAX_MANIFEST_BYTES = 16 << 20  # golden rows and a search table make a manifest tens of KiB; 16 MiB is ample
MAX_SIGNATURE_BYTES = 4 << 10
MAX_KEY_BYTES = 64 << 10
MAX_REPORT_BYTES = 32 << 20


class UnsafeFile(OSError):
    """A path that is not a regular file of acceptable size (a link, a device, a FIFO, too large)."""


def read_capped(path: Path, cap: int) -> bytes:
    """The bytes of a regular file at ``path`` (never through a symlink), at most ``cap`` of them.

    Raises :class:`FileNotFoundError` when it is absent, :class:`UnsafeFile` when it is a link, not
    a regular file, or larger than ``cap``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symbolic link: refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is not a regular file: refusing to read it")
        if info.st_size > cap:
            raise UnsafeFile(f"{path} has {info.st_size} bytes, more than the {cap} allowed: refusing to read it")
        chunks: list[bytes] = []
        total = 0
        while True:  # the size can change after fstat: count what really arrives
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise UnsafeFile(f"{path} grew past the {cap} bytes allowed while it was read: refusing it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist, and no link is followed) with ``data``, then fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Make ``path`` a folder only this user can use (0700), or accept it if it already is one.

    Refuses a symlink, a folder owned by another user, or one that others can write, naming what is
    wrong (a folder of ours that others could only read is tightened to 0700): a folder someone
    else made first must never be used for sockets, locks or keys.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(f"{path} is not a folder (a link or a file is there): refusing to use it")
    if info.st_uid != os.geteuid():
        raise UnsafeFile(f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}): refusing to use it")
    if info.st_mode & 0o022:  # others could have planted something in it already
        raise UnsafeFile(
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}): refusing to use it; "
            "remove it, or make it private (chmod 700) after checking what is in it"
        )
    if info.st_mode & 0o077:  # ours, and nobody else could write it: only tighten who may read it
        os.chmod(path, 0o700)
    return path
