"""Crash-safe writes: a reader sees the old file or folder or the complete new one, never half of one, and a
crash at any point loses neither.

Every writer in recrank goes through :func:`atomic_path` (write into a temporary place beside the target, then
:func:`replace_path`) or :func:`replace_path` directly. :func:`replace_path` moves a complete file or folder into
place in steps that are each safe to stop after:

1. fsync the new content (every file, every folder) so a power cut cannot leave it half on disk;
2. move the old target aside as ``.<name>.old`` (a folder cannot be renamed over a non-empty one);
3. rename the new one in, fsync the parent folder;
4. delete the old one.

A crash between 2 and 3 leaves only ``.<name>.old``: :func:`recover` (run by the next write of the same path,
and by :func:`sweep` over a folder) renames it back; a crash after 3 leaves a stale ``.<name>.old`` that it
deletes. Temporary places are named ``.<name>.*.tmp`` (never matched by an output glob) and swept the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

ASIDE_SUFFIX = ".old"
TMP_SUFFIX = ".tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (the folder itself last)."""
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path, topdown=False):
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync(Path(root) / name)
            _fsync(Path(root))
    elif path.exists():
        _fsync(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def aside_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{ASIDE_SUFFIX}")


def recover(final: str | Path) -> None:
    """Finish or undo a :func:`replace_path` of ``final`` that a crash interrupted: restore the old content when
    the new one never arrived, else drop the old one."""
    final = Path(final)
    aside = aside_path(final)
    if not (aside.exists() or aside.is_symlink()):
        return
    if final.exists() or final.is_symlink():
        _remove(aside)
    else:
        os.replace(aside, final)
        _fsync(final.parent)


def replace_path(new: str | Path, final: str | Path) -> Path:
    """Move the complete file or folder ``new`` into ``final``'s place (the steps in the module docstring)."""
    new, final = Path(new), Path(final)
    recover(final)
    fsync_tree(new)
    aside = aside_path(final)
    had_old = final.exists() or final.is_symlink()
    if had_old:
        os.replace(final, aside)
    os.replace(new, final)
    _fsync(final.parent)
    if had_old:
        _remove(aside)
    return final


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place (:func:`replace_path`) only if the block
    succeeds. Works for files and folders (the block creates whatever it wants at the yielded path)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        replace_path(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(folder: str | Path, depth: int = 2) -> list[Path]:
    """Recover every interrupted :func:`replace_path` under ``folder`` (``depth`` levels) and delete the
    temporary places of interrupted writes; return what was restored or removed."""
    folder, done = Path(folder), []
    if not folder.is_dir():
        return done
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith(".") and name.endswith(ASIDE_SUFFIX):
            recover(entry.with_name(name[1 : -len(ASIDE_SUFFIX)]))
            done.append(entry)
        elif name.startswith(".") and name.endswith(TMP_SUFFIX):
            _remove(entry)
            done.append(entry)
        elif depth > 1 and entry.is_dir() and not entry.is_symlink():
            done += sweep(entry, depth - 1)
    return done


def write_parquet_atomic(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` (zstd parquet) through a temporary file and :func:`replace_path`."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
    return Path(path)


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON through a temporary file and :func:`replace_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)
