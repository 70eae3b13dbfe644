from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sftkit._io import atomic_directory, atomic_path, atomic_write_bytes, atomic_write_text, sha256_file


def test_sha256_file_matches_whole_file_digest_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * ((1 << 22) // 256 + 3)  # spans more than one read chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_atomic_writes_replace_content_and_leave_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    atomic_write_bytes(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        Path(tmp).write_text("half", encoding="utf-8")
        raise RuntimeError("boom")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_directory_swaps_in_whole_and_restores_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as staging:
        (staging / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(out) as staging:
            (staging / "a.txt").write_text("second")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or retired leftovers

    with atomic_directory(out) as staging:
        (staging / "b.txt").write_text("replaced")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
