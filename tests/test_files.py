"""spos/files.py: every file a run leaves is written atomically (a complete old or new file, never half of one, even
when the write fails or is killed), through one kind of temporary file that a resume clears."""
import os

import pytest
import torch

from spos import files


def test_a_write_creates_or_replaces_the_whole_file(tmp_path):
    path = tmp_path / "deep" / "state.json"
    files.write_text(str(path), "first")
    assert path.read_text() == "first"
    files.write_text(str(path), "second, longer")
    assert path.read_text() == "second, longer"
    assert os.listdir(path.parent) == ["state.json"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "candidates.csv"
    files.write_text(str(path), "old table")

    def half_then_fail(f):
        f.write("half a new ta")
        raise KeyboardInterrupt  # Ctrl-C inside the write: BaseException, not Exception

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(str(path), half_then_fail)
    assert path.read_text() == "old table"
    assert os.listdir(tmp_path) == ["candidates.csv"]


def test_the_file_and_then_its_folder_reach_the_disk_before_the_write_returns(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def record(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", record)
    files.write_text(str(tmp_path / "a.json"), "{}")
    assert len(synced) == 2
    assert synced[0].startswith(files.TEMP_PREFIX) and synced[0].endswith("-a.json")  # the contents, then the rename
    assert synced[1] == tmp_path.name  # of the folder


def test_tensors_round_trip_and_are_read_without_unpickling_objects(tmp_path):
    path = tmp_path / "epoch_1.pth.tar"
    files.save_tensors({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1}, str(path))
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))


def test_what_interrupted_writes_left_is_removed_and_nothing_else(tmp_path):
    """A kill between a write's start and its rename leaves its temporary file, with the one prefix."""
    (tmp_path / "epoch_1.pth.tar").write_bytes(b"weights")
    (tmp_path / "notes.txt").write_text("mine")
    left = [tmp_path / f"{files.TEMP_PREFIX}abc-training_state.pth.tar", tmp_path / f"{files.TEMP_PREFIX}x-a.json"]
    for path in left:
        path.write_bytes(b"half")
    assert files.remove_interrupted_writes(str(tmp_path)) == sorted(str(p) for p in left)
    assert sorted(os.listdir(tmp_path)) == ["epoch_1.pth.tar", "notes.txt"]
    assert files.remove_interrupted_writes(str(tmp_path)) == []
