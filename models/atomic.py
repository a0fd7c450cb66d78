"""Atomic writes of files and folders: a reader sees the old version or the new one, never half.

Every writer of a stored artifact goes through here. A temp is named ``.<name>.tmp-<pid>`` beside its
target; a replaced folder waits as ``.<name>.old-<pid>`` until the new one is in place, so the old
version is kept until the swap. ``clean_stale`` removes what a crashed run left (and puts back a
folder whose swap was cut between its two renames); steps call it on the data dir when they start.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP, OLD = ".tmp-", ".old-"


def _aside(path: Path, mark: str, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}{mark}{pid or os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; on success it replaces ``path``, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(path, TMP)
    _remove(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON (floats for numpy scalars) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return float(obj)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path`` to fill; on success it is swapped in.

    The old folder stays in place until the new one is complete, then moves aside for the two renames
    of the swap and is deleted after. On error the temp folder is deleted and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _aside(path, TMP), _aside(path, OLD)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)  # the swap failed half-way: the old folder goes back
            raise
    finally:
        _remove(tmp)
        _remove(old)


@contextmanager
def scratch_dir(beside: Path | str) -> Iterator[Path]:
    """Yield an empty work folder next to ``beside`` (same file system), removed on exit; never swapped
    in. Named like the temps above, so ``clean_stale`` removes it if the process dies."""
    beside = Path(beside)
    path = _aside(beside.with_name(f"{beside.name}-scratch"), TMP)
    _remove(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        _remove(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> tuple[str, int] | None:
    """(mark, pid) of a temp or aside name written by this module, else None."""
    for mark in (TMP, OLD):
        _, sep, pid = name.rpartition(mark)
        if sep and name.startswith(".") and pid.isdigit():
            return mark, int(pid)
    return None


def clean_stale(root: Path | str) -> list[Path]:
    """Remove temps of runs that are no longer alive under ``root``; restore an old folder whose swap
    a crash cut short (target missing). Returns what was removed or restored."""
    root = Path(root)
    if not root.exists():
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            owner = _owner_pid(name)
            if owner is None or owner[1] == os.getpid() or _pid_alive(owner[1]):
                continue
            stale = Path(dirpath) / name
            target = stale.with_name(name[1:name.rindex(owner[0])])
            if owner[0] == OLD and not target.exists():
                os.replace(stale, target)
            else:
                _remove(stale)
            found.append(stale)
        dirnames[:] = [d for d in dirnames if _owner_pid(d) is None]
    return found
