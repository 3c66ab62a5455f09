"""The one crash-safe writer: a crash injected at every step of a replace leaves the old or the new content
complete, never neither and never half of one, and the next write (or a sweep) cleans up."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import features.io as io


class Crash(BaseException):
    """A process dying mid-write (BaseException: no writer may catch it)."""


def _steps(monkeypatch, crash_at: int | None) -> list[str]:
    """Count the filesystem steps of a write (renames, removals, fsyncs); raise :class:`Crash` at ``crash_at``."""
    seen: list[str] = []

    def wrap(name, real):
        def step(*args, **kwargs):
            seen.append(name)
            if crash_at is not None and len(seen) == crash_at:
                raise Crash(name)
            return real(*args, **kwargs)

        return step

    monkeypatch.setattr(io.os, "replace", wrap("rename", os.replace))
    monkeypatch.setattr(io, "_remove", wrap("remove", io._remove))
    monkeypatch.setattr(io, "_fsync", wrap("fsync", io._fsync))
    return seen


def _folder(path: Path, tag: str) -> None:
    path.mkdir()
    (path / "weights.bin").write_text(tag * 100)
    (path / "meta.json").write_text(f'{{"v": "{tag}"}}')


def _content(path: Path) -> str | None:
    """'old' or 'new' when the folder is complete and of one version, None when absent; fails when mixed."""
    if not path.exists():
        return None
    tags = {(path / "weights.bin").read_text()[:3], (path / "meta.json").read_text()[7:10]}
    assert len(tags) == 1, f"a mixed folder: {tags}"
    return tags.pop()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _write(final: Path, tag: str) -> None:
    with io.atomic_path(final) as tmp:
        _folder(tmp, tag)


def test_an_uninterrupted_replace_takes_these_steps(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "ranker"
    _write(final, "old")
    seen = _steps(monkeypatch, None)
    _write(final, "new")
    # fsync both files and the folder; old aside; new in; fsync the parent; drop the old
    assert seen == ["fsync"] * 3 + ["rename", "rename", "fsync", "remove"]
    assert _content(final) == "new" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_a_crash_at_any_step_loses_nothing_and_the_next_write_recovers(
    tmp_path: Path, monkeypatch, crash_at: int
) -> None:
    final = tmp_path / "ranker"
    _write(final, "old")
    _steps(monkeypatch, crash_at)
    with pytest.raises(Crash):
        _write(final, "new")
    monkeypatch.undo()
    # what a reader finds right after the crash: the old or the new folder, whole, or (between the two renames)
    # the old one aside, which recover() puts back
    visible = _content(final)
    assert visible in ("old", "new") or (visible is None and (tmp_path / ".ranker.old").is_dir())
    io.recover(final)
    assert _content(final) == (visible or "old")
    assert not (tmp_path / ".ranker.old").exists()
    # the next write of the same path completes and leaves nothing behind but temporary places a sweep removes
    _write(final, "new")
    assert _content(final) == "new"
    io.sweep(tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_crash_while_writing_the_new_content_keeps_the_old(tmp_path: Path) -> None:
    final = tmp_path / "ranker"
    _write(final, "old")
    with pytest.raises(Crash), io.atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("new" * 100)
        raise Crash("killed half-way")
    assert _content(final) == "old" and _leftovers(tmp_path) == []


def test_files_are_replaced_the_same_way(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    io.write_json_atomic({"day": 1}, path)
    _steps(monkeypatch, 4)  # crash after the old file went aside: [fsync new, rename old, rename new, fsync dir]
    with pytest.raises(Crash):
        io.write_json_atomic({"day": 2}, path)
    monkeypatch.undo()
    assert path.read_text().startswith('{\n  "day": 2')  # the rename happened; the parent's fsync did not
    restored = tmp_path / "other.json"
    io.write_json_atomic({"day": 1}, restored)
    _steps(monkeypatch, 3)  # crash between the two renames
    with pytest.raises(Crash):
        io.write_json_atomic({"day": 2}, restored)
    monkeypatch.undo()
    assert not restored.exists() and io.sweep(tmp_path)  # the sweep puts the old file back
    assert restored.read_text().startswith('{\n  "day": 1') and _leftovers(tmp_path) == []


def test_no_module_renames_or_deletes_its_outputs_by_hand() -> None:
    """Every writer goes through features.io: no ``os.replace`` / ``os.rename`` elsewhere in the package."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("conf", "runtime", "features", "textmodel", "ranker", "serving", "offline"):
        for path in (root / package).rglob("*.py"):
            if path == root / "features" / "io.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                renames = isinstance(node, ast.Attribute) and node.attr in ("replace", "rename")
                if renames and isinstance(node.value, ast.Name) and node.value.id == "os":
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_the_next_prepare_sweeps_what_a_crashed_run_left(tmp_path: Path) -> None:
    """A data folder a crash left between the two renames of a write (the old file aside, a temporary folder
    beside it): the next ``recrank data prepare`` of that folder finds nothing half-done left over."""
    from sample_data import TINY_SYNTHETIC

    from offline.cli import main

    args = ["data", "prepare", *TINY_SYNTHETIC, f"data.dir={tmp_path / 'd'}"]
    assert main(args) == 0
    data = tmp_path / "d"
    os.replace(data / "split.json", data / ".split.json.old")  # crashed between "old aside" and "new in"
    (data / ".items.parquet.abc.tmp").mkdir()  # a write's temporary place
    restored = io.sweep(data)
    assert sorted(p.name for p in restored) == [".items.parquet.abc.tmp", ".split.json.old"]
    assert (data / "split.json").is_file() and _leftovers(data) == []
    (data / ".items.parquet.abc.tmp").mkdir()
    assert main(args) == 0
    assert _leftovers(data) == []
