"""Safety of reading the inbox: every reader of an original opens it by identity.

Real files, real FIFOs and symlinks, the real CLI in subprocesses. Each test reproduces
an attack or a stuck state of issue 8 (items 1, 4, 5, 8b, 9, 13, 14, 18b).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgq import samples

OLD = time.time() - 600  # mtimes well past any settle time


def make(path: Path, seed: int, **kw) -> Path:
    """A real camera-like JPEG at ``path`` with an old mtime."""
    kw.setdefault("width", 320)
    kw.setdefault("height", 240)
    p = samples.make_photo(path, seed=seed, **kw)
    os.utime(p, (OLD, OLD))
    return p


def rows(db: Path, sql: str, args=()) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def store_images(tmp_path: Path) -> list[Path]:
    store = tmp_path / "imgq-store"
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


def scan_and_enqueue(run_imgq, inbox: Path) -> list[str]:
    r = run_imgq("scan", "--settle", "0", inbox)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    e = run_imgq("enqueue", "-", input=r.stdout)
    assert e.returncode == 0, e.stderr
    return ids


# ---- item 4: the worker decodes only the bytes it checked --------------------------------


def test_work_never_decodes_a_private_file_behind_a_swapped_symlink(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    photo = make(inbox / "alice" / "IMG_0001.jpg", seed=1)
    secret = make(tmp_path / "private" / "secret.jpg", seed=2, width=400, height=300)
    [file_id] = scan_and_enqueue(run_imgq, inbox)
    photo.unlink()
    photo.symlink_to(secret)  # the name now leads out of the inbox

    r = run_imgq("work", "--drain", "-j", "1")
    assert r.returncode == 1
    assert store_images(tmp_path) == []  # nothing was made from the private file
    [(state, error)] = rows(db_path, "SELECT state, error FROM jobs WHERE file_id = ?", (file_id,))
    assert state == "failed"
    assert "symlink" in error and str(photo) in error


def test_work_refuses_a_photo_replaced_after_scan(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    photo = make(inbox / "bob" / "IMG_0002.jpg", seed=3)
    [file_id] = scan_and_enqueue(run_imgq, inbox)
    make(photo, seed=4)  # another photo under the same name (same size and mtime even)

    r = run_imgq("work", "--drain", "-j", "1")
    assert r.returncode == 1
    assert store_images(tmp_path) == []
    [(state, error, kind, attempts)] = rows(db_path, "SELECT state, error, error_kind, attempts FROM jobs WHERE file_id = ?", (file_id,))
    assert (state, kind, attempts) == ("failed", "permanent", 1)  # not retried: scan again
    assert "changed in the inbox since it was scanned" in error and "scan again" in error
    assert str(photo) in error


def test_work_still_makes_every_artifact_from_an_unchanged_photo(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    make(inbox / "carol" / "IMG_0003.jpg", seed=5, width=1600, height=1200)
    [file_id] = scan_and_enqueue(run_imgq, inbox)
    r = run_imgq("work", "--drain", "-j", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [file_id]
    sizes = dict(rows(db_path, "SELECT name, width || 'x' || height FROM artifacts"))
    assert sizes == {"thumb": "120x90", "web": "640x480"}


# ---- item 5: a FIFO swapped in after scan hangs nothing -----------------------------------


def test_work_does_not_hang_on_a_fifo_swapped_in_after_scan(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    photo = make(inbox / "alice" / "IMG_0004.jpg", seed=6)
    [file_id] = scan_and_enqueue(run_imgq, inbox)
    photo.unlink()
    os.mkfifo(photo)

    r = run_imgq("work", "--drain", "-j", "1", timeout=60)  # hung for ever before
    assert r.returncode == 1
    [(state, error)] = rows(db_path, "SELECT state, error FROM jobs WHERE file_id = ?", (file_id,))
    assert state == "failed" and "not a regular file" in error and str(photo) in error


def test_scan_does_not_hang_on_a_fifo_swapped_in_after_the_walk(tmp_path):
    """Between listing a folder and reading a file, the file becomes a FIFO: reading it
    must not block (the walk's own check saw a regular file)."""
    inbox = tmp_path / "inbox"
    photo = make(inbox / "alice" / "IMG_0005.jpg", seed=7)
    st = photo.stat()
    photo.unlink()
    os.mkfifo(photo)
    code = (
        "import os, sys; from pathlib import Path; from imgq import inbox\n"
        f"st = os.stat({str(photo)!r})\n"
        f"item = inbox.examine(Path({str(inbox)!r}), Path('alice/IMG_0005.jpg'), st, None, 'unknown', 10**9)\n"
        "print(item['skip'] or item['error'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "not a regular file" in out.stdout
    assert st.st_size > 0
