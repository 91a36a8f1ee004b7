"""store.write_atomically, the one way imgq writes a file: a reader sees the old file or the
whole new one, never a part, and a failed write leaves no temporary file behind."""

import os

import pytest

from imgq import store


def _names(folder):
    return sorted(os.listdir(folder))


def test_writes_the_whole_file_and_returns_what_write_returned(tmp_path):
    dest = tmp_path / "a" / "b.txt"
    assert store.write_atomically(dest, lambda f: f.write(b"hello")) == 5
    assert dest.read_bytes() == b"hello"
    assert _names(dest.parent) == ["b.txt"]


def test_a_failing_write_or_check_leaves_the_old_file_and_no_temporary_name(tmp_path):
    dest = tmp_path / "b.txt"
    dest.write_bytes(b"old")

    def broken(f):
        f.write(b"part")
        raise OSError(5, "disk says no")

    with pytest.raises(OSError):
        store.write_atomically(dest, broken)

    def refuse(tmp):
        assert open(tmp, "rb").read() == b"new"  # the check sees the written bytes
        raise ValueError("does not verify")

    with pytest.raises(ValueError):
        store.write_atomically(dest, lambda f: f.write(b"new"), check=refuse)
    assert dest.read_bytes() == b"old"
    assert _names(tmp_path) == ["b.txt"]


def test_replace_false_never_replaces_a_name_that_is_taken(tmp_path):
    dest = tmp_path / "b.txt"
    dest.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        store.write_atomically(dest, lambda f: f.write(b"mine"), replace=False)
    assert dest.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["b.txt"]
    store.write_atomically(tmp_path / "c.txt", lambda f: f.write(b"mine"), replace=False)
    assert (tmp_path / "c.txt").read_bytes() == b"mine"


def test_in_an_open_folder_a_symlink_at_the_name_is_replaced_never_written_through(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").symlink_to(target)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.write_atomically("x", lambda f: f.write(b"new"), dir_fd=fd, sync=False)
        with pytest.raises(FileExistsError):
            store.write_atomically("x", lambda f: f.write(b"newer"), dir_fd=fd, replace=lambda: False)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"keep"
    assert not (out / "x").is_symlink() and (out / "x").read_bytes() == b"new"
    assert _names(out) == ["x"]
