"""One training run per save folder, and no trainer outliving its launcher.

Two runs writing into one folder overwrite each other's checkpoints, interleave metrics.jsonl, and a run started
later autoresumes from a checkpoint the other run is still writing. :class:`RunLock` takes an exclusive
``fcntl.flock`` on ``<folder>/.run-rank<R>.lock`` (one file per global rank, so every rank of a run holds its own
lock and every rank of a second run is refused at once, without waiting on a collective). The kernel releases a
flock when its holder dies, however it dies; the holder's pid, host and start time are written inside the file only
to name the holder in the error, and to tell that the previous holder died without releasing it (stale lock).

:func:`exit_with_parent` makes a trainer started by a launcher (``composer -n N``, torchrun) receive SIGTERM when
the launcher dies, so that killing the launcher never leaves an orphaned trainer writing into the folder.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from typing import Optional

log = logging.getLogger("mosaicbert")

__all__ = ["RunLock", "RunLockedError", "exit_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RunLockedError(RuntimeError):
    """Another live run holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class RunLock:
    """Exclusive lock of one run on `folder` (rank `rank`); use as a context manager or call acquire/release.

    Raises :class:`RunLockedError` naming the folder and the holder (pid, host, start time) when another live
    process holds it. A lock file left by a dead holder is taken over with a warning.
    """

    def __init__(self, folder: str, rank: int = 0):
        self.folder = folder
        self.path = os.path.join(folder, f".run-rank{rank}.lock")
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
                   f"started {holder.get('started', '?')}" if holder else "a process that has not written its pid yet")
            raise RunLockedError(
                f"save folder {self.folder!r} is in use by another run ({who}; lock file {self.path}). "
                f"Wait for that run to finish, stop it (kill {holder.get('pid', '<pid>')} on "
                f"{holder.get('host', 'its host')}), "
                f"or give this run another save_folder."
            ) from None
        previous = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if previous.get("pid"):
            # The kernel dropped its flock, so the previous holder is gone (or, on another host, lost its lock).
            same_host = previous.get("host") == socket.gethostname()
            state = "no longer running" if same_host and not _pid_alive(int(previous["pid"])) else "lock released"
            log.warning("%s: taking over the stale lock of pid %s on host %s (%s; it ended without releasing it)",
                        self.folder, previous["pid"], previous.get("host", "?"), state)
        info = f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file (a clean exit, not stale) and unlock. The file is kept: deleting it would let a process
        that opened the old file and a process that creates a new one both believe they hold the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def exit_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent (the launcher) dies; True if set.

    Only for processes started by a launcher: a trainer started from a shell (`nohup python main.py ... &`) is
    meant to outlive that shell. If the parent already died before the request, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent or parent == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), sig)
    return True
