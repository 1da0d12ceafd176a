"""One writer per run directory: an advisory lock that the operating system drops with its holder.

``fit``, ``fit --resume`` and ``fit --overwrite`` take :class:`RunLock` on the run directory
before they read or write anything in it, and hold it until they return or raise. The lock is
``fcntl.flock`` on the file ``.pyro-vae.lock`` inside the directory (``msvcrt.locking`` on
Windows): the kernel releases it when the holding process exits in any way, SIGKILL included,
so a lock file left behind by a killed process blocks nothing. The holder writes its process id,
host and start time into the file, and a second writer is refused at once with them.

Readers (``load``, ``sample``, ``evaluate``, ``encode``, ``diagnose``) take no lock: every file
of a run is replaced atomically (:mod:`pyro_vae.io.checkpoint`), so they never see half of one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import RunDirError

#: The lock file inside a run directory; ``--overwrite`` never removes it while held, and a
#: folder holding only this file (a killed run's) counts as empty.
LOCK_FILE = ".pyro-vae.lock"

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def holder(run_dir: str | os.PathLike) -> dict | None:
    """What the lock file of ``run_dir`` says about the process that wrote it (``pid``,
    ``host``, ``command``, ``since``), or None if there is none or it cannot be read. A dead
    process's record can remain; only :class:`RunLock` tells whether the lock is held."""
    try:
        record = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


class RunLock:
    """The write lock of one run directory, as a context manager.

    Parameters
    ----------
    run_dir : path
        The run directory. It is created if missing (and removed again on release if the
        lock file was all that went into it, so a refused or failed run leaves no folder).
    command : str
        What the holder does, for the refusal message of a second writer (``"pyro-vae fit"``).

    Raises
    ------
    RunDirError
        On entering, if another process holds the lock (naming its process id, host and start
        time), or if the folder cannot be created or the lock file not opened.
    """

    def __init__(self, run_dir: str | os.PathLike, command: str = "pyro-vae fit"):
        self.run_dir, self.command = Path(run_dir), command
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: Path | None = None  # the topmost folder this lock made

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise :class:`RunDirError`; never waits."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir} is a file; give a folder path")
        while True:
            self._make_folder()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # a holder that made the folder removed it as it let go: make it again
            except OSError as err:
                self._remove_folder()
                raise RunDirError(f"cannot lock {self.run_dir} ({err.strerror}); pick a "
                                  "writable folder") from None
            if not _try_lock(fd):
                os.close(fd)
                self._remove_folder()
                raise RunDirError(self._refusal())
            try:  # the holder before us may have removed the file between our open and lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        except OSError as err:
            self.release()
            raise RunDirError(f"cannot write the lock file {self.path} ({err.strerror}); free "
                              "some space or pick another folder") from None

    def _make_folder(self) -> None:
        """Create the run directory and missing parents, remembering the topmost one made."""
        missing = []
        folder = self.run_dir
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # another process made it just now: the lock decides
            except OSError as err:
                self._remove_folder()
                raise RunDirError(f"cannot create {self.run_dir} ({err.strerror}); pick "
                                  "another folder") from None
            if self._created is None:
                self._created = folder

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op if not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiter re-checks the inode
        except OSError:
            pass
        try:
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_folder()

    def _remove_folder(self) -> None:
        """Remove the folders this lock created (the run directory and the parents it made)
        where nothing else went into them."""
        if self._created is None:
            return
        folder = self.run_dir
        try:
            while True:
                folder.rmdir()
                if folder == self._created:
                    break
                folder = folder.parent
        except OSError:
            pass  # not empty: a run was written, or someone else's files
        self._created = None

    def _refusal(self) -> str:
        record = holder(self.run_dir) or {}
        who = (f"process {record['pid']} on {record.get('host', '?')} "
               f"({record.get('command', 'pyro-vae')}, since {record.get('since', '?')})"
               if "pid" in record else "another process")
        return (f"{self.run_dir} is being written by {who}; wait for it to finish or stop it, "
                "or choose another folder")
