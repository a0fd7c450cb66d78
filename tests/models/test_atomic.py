"""models.atomic: old-or-new for readers, nothing half-written, leftovers of dead runs cleaned."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from models.atomic import atomic_dir, atomic_file, clean_stale, write_json


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == '{\n  "v": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_folder_swap_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_text("v1")
    with atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_text("v2")
        assert (target / "model.onnx").read_text() == "v1"  # readers still see the old one
    assert (target / "model.onnx").read_text() == "v2"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_text("v3")
        raise RuntimeError("crash")
    assert (target / "model.onnx").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_clean_stale_removes_dead_runs_temps_and_keeps_live_ones(tmp_path):
    dead = _dead_pid()
    (tmp_path / "sub").mkdir()
    stale_file = tmp_path / "sub" / f".metrics.json.tmp-{dead}"
    stale_dir = tmp_path / f".training_set.tmp-{dead}"
    live = tmp_path / f".bundle.tmp-{os.getppid()}"
    stale_file.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "train.parquet").write_text("x")
    live.write_text("in use")
    removed = clean_stale(tmp_path)
    assert set(removed) == {stale_file, stale_dir}
    assert not stale_file.exists() and not stale_dir.exists() and live.exists()


def test_clean_stale_restores_a_folder_whose_swap_was_cut_short(tmp_path):
    aside = tmp_path / f".raw.old-{_dead_pid()}"
    aside.mkdir()
    (aside / "impressions.parquet").write_text("snapshot")
    clean_stale(tmp_path)
    assert (tmp_path / "raw" / "impressions.parquet").read_text() == "snapshot"
    assert not aside.exists()


def test_folder_swap_failing_at_the_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "raw"
    with atomic_dir(target) as tmp:
        (tmp / "impressions.parquet").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "impressions.parquet").write_text("new")
    assert (target / "impressions.parquet").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
