"""The lock of a run folder: one training process writes a run folder at a time.

A training process holds an exclusive ``flock`` on ``.textdiff-run.lock`` in its run folder; the
kernel releases it on any exit (even SIGKILL), so no lock is ever stale, and a second writer is
refused at once with the holder's PID. Without ``fcntl`` or file locks the run goes unlocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import TextdiffError

logger = logging.getLogger(__name__)

LOCK_FILE = ".textdiff-run.lock"


class RunFolderError(TextdiffError, ValueError):
    """The output folder cannot be used as asked (another run, foreign files, a live writer)."""


_SCOPES: list[list[RunLock]] = []


class RunLock:
    """An exclusive ``flock`` on ``folder/.textdiff-run.lock`` until :meth:`release` (or the
    process's end); the file holds the holder's PID.

    Raises:
        RunFolderError: Another process holds the lock, or the folder cannot be written.
    """

    def __init__(self, folder: Path):
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX
            logger.warning("no file locks here: make sure one training process writes %s", folder)
            return
        try:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(
                f"cannot write to the output folder {folder} ({e.strerror}); choose a folder you "
                "can write to (--output-dir)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            who = "this process" if holder == str(os.getpid()) else "another training process"
            raise RunFolderError(
                f"{folder} is in use by {who} (PID {holder}); wait for it to end or stop it, "
                "then run again (a stopped run goes on with --resume)"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts)
            os.close(fd)
            logger.warning("cannot lock %s (%s); run one training there at a time", folder, e)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        if _SCOPES:
            _SCOPES[-1].append(self)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the kernel releases it
            self.release()


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """Releases every run-folder lock taken inside the block when it ends, however it ends."""
    taken: list[RunLock] = []
    _SCOPES.append(taken)
    try:
        yield
    finally:
        _SCOPES.remove(taken)
        for lock in taken:
            lock.release()
