"""Output directories: what kind of run each holds, who is writing in it, atomic file
writes, and file-system faults as one-line errors.

Every command that writes results owns a directory of one kind, known by the file that
kind writes first: `dgpg train` config.json, `dgpg compare` compare.json, `dgpg sweep`
sweep.json. `open_run` refuses a directory of another kind (even with `overwrite`), an
empty path, and the current directory unless it is a fresh empty one; it locks the
directory for the run (a second writer is refused naming the holder's PID) and removes a
directory it created if the run is refused before writing anything in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

KINDS = {"train": "config.json", "compare": "compare.json", "sweep": "sweep.json"}
"""The file by which each kind of run directory is known."""
LOCK = "dgpg.lock"
_HELD: set[Path] = set()  # the locks this process holds


def kind_of(path: Path) -> str | None:
    """The kind of run `path` holds (a key of KINDS), or None."""
    path = Path(path)
    for kind, marker in KINDS.items():
        if (path / marker).is_file():
            return kind
    return None


def _is_current_directory(path: Path) -> bool:
    try:
        return path.resolve() == Path.cwd().resolve()
    except OSError:
        return False


def check_out(path, kind: str, continues: bool = False, overwrite: bool = False) -> Path:
    """`path` as the output directory of a `kind` run, or ValueError before anything is
    written. `continues`: the run goes on from what is there (a resume, a sweep restart);
    `overwrite`: a finished run of the same kind may be replaced."""
    if not str(path).strip():
        raise ValueError(f"out={str(path)!r} is invalid: allowed a directory path")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={str(path)!r} is invalid: it is a file; allowed a directory path")
    found = kind_of(path) if path.is_dir() else None
    if found is not None and found != kind:
        raise ValueError(f"out={str(path)!r} holds a `dgpg {found}` directory ({KINDS[found]}): allowed a "
                         f"`dgpg {kind}` directory or a new one")
    if _is_current_directory(path) and any(p.name != LOCK for p in path.iterdir()):
        raise ValueError(f"out={str(path)!r} is the current directory and not empty: allowed a new directory, "
                         "or an empty one")
    if found == kind and not (continues or overwrite):
        how = {"train": f"--resume {path} to continue it, --overwrite to replace it,",
               "compare": "--overwrite to replace it,", "sweep": "the same arguments to continue it"}[kind]
        raise ValueError(f"out={str(path)!r} already holds a `dgpg {kind}` run: allowed {how} or another directory")
    return path


@contextlib.contextmanager
def open_run(path, kind: str, continues: bool = False, overwrite: bool = False, lock: bool = True) -> Iterator[Path]:
    """Check `path` (`check_out`), create it, and hold its lock while the block runs. If
    the block raises and this call created the directory, it is removed when nothing
    but the lock was written in it."""
    path = check_out(path, kind, continues, overwrite)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"out={str(path)!r} is invalid: {error.strerror}; allowed a writable directory path") from None
    try:
        with (hold_lock(path) if lock else contextlib.nullcontext()):
            yield path
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on directory `path` (its file dgpg.lock holds the PID and host)
    for the block; ValueError naming the holder when another process has it. The lock
    dies with its process, so a killed run leaves nothing to clean. Re-entrant: a block
    inside another that holds the same lock runs at once."""
    lock_path = Path(path) / LOCK
    key = lock_path.resolve()
    if key in _HELD:
        yield
        return
    while True:
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ValueError(f"out={str(path)!r} is in use by another dgpg process ({holder}): allowed another "
                             "directory, or the same once that process has ended") from None
        try:  # the holder before us may have removed the file we opened: lock the one on disk
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a process killed, or a
    write that fails, at any instant leaves the old file or the new one, never a part
    (and no temporary file after a failure)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            raise as_os_error(error, path) from None
        raise


def write_json(path: Path, value) -> None:
    """`value` as indented JSON, atomically; NaN refused (callers pass `json_safe` values)."""
    write_atomic(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


CAUSES = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOENT: "not found",
          errno.EDQUOT: "disk quota exceeded"}


def describe_os_error(error: OSError) -> str:
    """One line naming the path and the cause of a file-system fault."""
    cause = CAUSES.get(error.errno, error.strerror or type(error).__name__)
    where = f" at {str(error.filename)!r}" if error.filename is not None else ""
    return f"file-system error{where}: {cause}"


def as_os_error(error: BaseException, path: Path) -> OSError:
    """An OSError naming `path` for a write error that a library (orbax, tensorstore)
    raised without it, or as another type: its cause recognised from the message (no
    space, read-only, permission), else its first line."""
    if isinstance(error, OSError):
        return error if error.filename is not None else OSError(error.errno, error.strerror, str(path))
    text = str(error)
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system"),
                        (errno.EACCES, "Permission denied")):
        if words.lower() in text.lower():
            return OSError(code, os.strerror(code), str(path))
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return OSError(errno.EIO, first, str(path))


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Silence the absl logger (orbax logs each failed write with its traceback before
    raising it) while the block runs: the raised error is reported once, by the caller."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
