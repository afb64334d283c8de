"""Files that are either whole or absent: atomic writes, one JSON writer, locked read-modify-write.

Every file the library writes goes through :func:`atomic_path`: the content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target (``os.replace``
is atomic on one file system). A reader therefore sees the old file or the new one, never half
of either.

Temporary names are ``.<name>.<pid>.<token>.bcc-tmp``: unique per writer (two processes never
share one), recognisable as ours (:func:`remove_stale_temps` deletes only these, and only those
whose process has died), and hidden.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".bcc-tmp"
_TEMP_RE = re.compile(r"^\..+\.([A-Za-z0-9-]+)\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"$")


def _host() -> str:
    """This machine's name, reduced to letters, digits and '-' (it becomes part of file names)."""
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temp_name(path: str | os.PathLike) -> Path:
    """A unique, hidden temporary name beside ``path`` (host and PID in it) that :func:`remove_stale_temps` knows."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Examples
    --------
    >>> with atomic_path("run/model.onnx") as tmp:   # doctest: +SKIP
    ...     torch.onnx.export(model, x, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():  # never written, or removed by someone else: the target must not look updated
            raise FileNotFoundError(f"the temporary file for {path} was not written or has disappeared")
        with open(tmp, "rb+") as fh:  # the bytes are on disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(text.encode("utf-8"), path)


def json_text(obj, indent: int | None = 2) -> str:
    """``obj`` as JSON text: UTF-8 kept readable, NaN refused, lists of scalars on one line, newline at the end."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    if indent:  # [1, 2, 3] and ["a", "b"] stay on one line; lists of objects or lists are left as they are
        one_line = re.compile(r"\[\s*\n\s*([^\[\]{}]*?)\s*\n\s*\]")
        text = one_line.sub(lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text)
    return text + "\n"


def write_json(obj, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (the library's one JSON writer).

    Raises
    ------
    ValueError
        If ``obj`` holds NaN or infinity (not JSON; a result that is not a number is not a result).
    """
    return write_text(json_text(obj, indent), path)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``; a no-op where unavailable).

    The lock file is left in place: removing it would let two processes lock two different files.
    """
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single-writer use only
        yield
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update_json(path: str | os.PathLike, change: Callable[[dict], dict | None], default: dict | None = None,
                indent: int | None = 2) -> dict:
    """Read ``path``, apply ``change``, write it back: under :func:`locked`, so concurrent updates all survive.

    ``change`` may modify the dict in place (return ``None``) or return a new one. A missing file
    starts from a copy of ``default`` (``{}``).
    """
    path = Path(path)
    with locked(path):
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else dict(default or {})
        new = change(data)
        data = data if new is None else new
        write_json(data, path, indent)
    return data


def try_claim(path: str | os.PathLike) -> bool:
    """Create ``path`` as a claim on some work; ``False`` if another live process holds it.

    The file is created with ``O_EXCL``, so of several processes (or machines sharing the folder)
    exactly one succeeds. It records host and PID: a claim left by a dead process on this host is
    taken over; one from another host is respected (delete the file to release it by hand).
    Release with ``Path(path).unlink()`` when the work is done or has failed.
    """
    import socket

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    with locked(path.parent / ".takeover"):  # two processes taking over the same dead claim: only one may win
        return _claim(path, me)


def _claim(path: Path, me: dict) -> bool:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                return False  # being written right now by its creator
            if holder.get("host") == me["host"] and not pid_alive(int(holder.get("pid", 0))):
                path.unlink(missing_ok=True)  # its process died: the work is free again
                continue
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(me))
        return True
    return False


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this machine (also when it belongs to another user)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows; ask the kernel instead
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete this library's temporary files in ``folder`` whose writing process no longer runs.

    Files of other tools, and temporaries of live processes (another run writing now), are kept.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    host = _host()
    for f in folder.iterdir():
        m = _TEMP_RE.match(f.name)
        # another machine's temporary (a shared folder) cannot be checked: it is left alone
        if m and f.is_file() and m.group(1) == host and not pid_alive(int(m.group(2))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
