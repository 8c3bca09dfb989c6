"""One run per output folder: an exclusive lock taken before anything in the folder is read or written.

``fcntl.flock`` on ``<output>/.bfcl-ext/lock``: the kernel drops it when the process ends, however
it ends, so a killed run never blocks the next one. The file also says who holds it (pid, host,
start time), for the message a second run prints.

Where the filesystem has no ``flock`` (some Lustre mounts, NFS without a lock manager: the call
fails with ENOLCK, ENOSYS or EOPNOTSUPP), the lock falls back to creating the file exclusively
(``O_EXCL``, atomic on NFS v3+ and Lustre). Such a lock outlives a killed run: it is taken over when
its holder ran on this host and is gone; a holder on another host is reported, and the message
says which file to delete once no run is active.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bfcl_ext.errors import ConfigError

LOCK_NAME = Path(".bfcl-ext") / "lock"
UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@dataclass
class FolderLock:
    path: Path
    handle: IO[str] | None  # the flock'd file; None for an O_EXCL lock file (removed on release)

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # drops the flock
        else:
            self.path.unlink(missing_ok=True)


def acquire(folder: Path, setting: str) -> FolderLock:
    """Lock ``folder`` for this process, or raise ``ConfigError`` naming who holds it."""
    path = folder / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
    except OSError as error:
        raise ConfigError(setting, str(folder), f"not writable ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(setting, str(folder), f"in use by another bfcl-ext run ({_holder(path)}); wait for "
                              "it to end, or use another output folder") from None
        if error.errno in UNSUPPORTED:
            return _acquire_exclusive(path, folder, setting)
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_me()) + "\n")
    handle.flush()
    return FolderLock(path, handle)


def _acquire_exclusive(path: Path, folder: Path, setting: str) -> FolderLock:
    for _ in range(2):
        try:
            descriptor = os.open(path.with_suffix(".excl"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path.with_suffix(".excl"))
            if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                path.with_suffix(".excl").unlink(missing_ok=True)  # its run was killed: stale
                continue
            raise ConfigError(setting, str(folder), f"in use by another bfcl-ext run ({_describe(holder)}; this "
                              f"filesystem has no flock: if no run is active, delete {path.with_suffix('.excl')})"
                              ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(_me()) + "\n")
        return FolderLock(path.with_suffix(".excl"), None)
    raise ConfigError(setting, str(folder), f"cannot take the lock {path.with_suffix('.excl')}")


def _me() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _holder(path: Path) -> str:
    return _describe(_read(path))


def _read(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "pid and host unknown"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
