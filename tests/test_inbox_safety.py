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

from imgq import store as store_lib
from imgq import samples

OLD = time.time() - 600  # mtimes well past any settle time


def make(path: Path, seed: int, **kw) -> Path:
    """A real camera-like JPEG at ``path`` with an old mtime (made under a short name
    beside it and renamed, so names up to the file system's limit work)."""
    kw.setdefault("width", 320)
    kw.setdefault("height", 240)
    path.parent.mkdir(parents=True, exist_ok=True)
    short = samples.make_photo(path.parent / f"made-{seed}.jpg", seed=seed, **kw)
    os.utime(short, (OLD, OLD))
    os.rename(short, path)
    return path


def rows(db: Path, sql: str, args=()) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def store_images(tmp_path: Path) -> list[Path]:
    store = tmp_path / "imgq-store"
    # the owner marker (store.OWNER_MARK) is not an image
    return sorted(p for p in store.rglob("*") if p.is_file() and p.name != store_lib.OWNER_MARK) if store.exists() else []


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
        "import os, sys; from pathlib import Path; from imgq import scan\n"
        f"st = os.stat({str(photo)!r})\n"
        f"item = scan.examine(Path({str(inbox)!r}), Path('alice/IMG_0005.jpg'), st, None, 'unknown', 10**9)\n"
        "print(item.get('skip') or item['error'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # (before: the open blocked for ever, waiting for a writer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert "not a regular file" in out.stdout
    assert st.st_size > 0


# ---- item 9: names that are not UTF-8 -------------------------------------------------------


def test_names_that_are_not_utf8_are_recorded_losslessly_and_processed(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    latin = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: not valid UTF-8
    folder = os.fsdecode(b"d\xe9j\xe0")
    make(inbox / "alice" / latin, seed=11)
    make(inbox / folder / "IMG_0001.jpg", seed=12)
    make(inbox / "alice" / "plain.jpg", seed=13)

    scan = run_imgq("scan", "--settle", "0", "--json", inbox)
    assert scan.returncode == 0, scan.stderr
    found = [__import__("json").loads(line) for line in scan.stdout.splitlines()]
    assert sorted(f["path"] for f in found) == sorted(
        [f"{inbox}/alice/caf\\xe9.jpg", f"{inbox}/d\\xe9j\\xe0/IMG_0001.jpg", f"{inbox}/alice/plain.jpg"]
    )
    assert {f["state"] for f in found} == {"seen"}
    # stored readably, and the owner is the folder as people read it
    stored = dict(rows(db_path, "SELECT path, owner FROM files"))
    assert stored == {"./alice/caf\\xe9.jpg": "alice", "./d\\xe9j\\xe0/IMG_0001.jpg": "d\\xe9j\\xe0", "alice/plain.jpg": "alice"}

    assert run_imgq("enqueue", "-", input=scan.stdout).returncode == 0
    work = run_imgq("work", "--drain", "-j", "1")
    assert work.returncode == 0, work.stderr
    assert {s for (s,) in rows(db_path, "SELECT state FROM files")} == {"processed"}
    for cmd in (("status",), ("status", "--json"), ("log", found[0]["id"])):
        r = run_imgq(*cmd)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, r.stderr)
    assert run_imgq("scan", "--settle", "0", inbox).stdout == ""  # unchanged: nothing new


def test_run_goes_on_past_a_name_that_is_not_utf8(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    make(inbox / "bob" / os.fsdecode(b"\xff\xfe.jpg"), seed=14)
    make(inbox / "bob" / "good.jpg", seed=15)
    (tmp_path / "dest").mkdir()
    r = run_imgq("run", inbox, "--to", tmp_path / "dest", "-j", "1")
    assert "Traceback" not in r.stderr and "UnicodeEncodeError" not in r.stderr, r.stderr
    state = dict(rows(db_path, "SELECT path, state FROM files"))
    assert state["bob/good.jpg"] == "collected"
    assert state["./bob/\\xff\\xfe.jpg"] in ("processed", "archived", "collected")


# ---- item 8b and 18b: what cannot be read now is tried again, and the exit says so ------------


def as_without_dac(*cmd) -> list[str]:
    """Run ``cmd`` without the capabilities that let root read any file, so a chmod 000
    file or folder is unreadable to it as to anyone (the tests run as root in CI)."""
    if os.geteuid() != 0:
        return list(cmd)
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a file unreadable to root")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", *cmd]


def imgq_cmd(tmp_path, *args) -> subprocess.CompletedProcess:
    from conftest import imgq_env

    return subprocess.run(
        as_without_dac(sys.executable, "-m", "imgq", *map(str, args)),
        cwd=tmp_path, env=imgq_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_a_file_unreadable_at_scan_time_is_examined_again_next_scan(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    locked = make(inbox / "carol" / "IMG_0007.jpg", seed=16)
    make(inbox / "carol" / "IMG_0008.jpg", seed=17)
    locked.chmod(0)
    first = imgq_cmd(tmp_path, "scan", "--settle", "0", inbox)
    assert first.returncode == 1
    assert str(locked) in first.stderr and "Permission denied" in first.stderr
    assert [p for (p,) in rows(db_path, "SELECT path FROM files")] == ["carol/IMG_0008.jpg"]

    locked.chmod(0o644)  # the sync client finished, or the owner fixed the permissions
    second = run_imgq("scan", "--settle", "0", inbox)
    assert second.returncode == 0, second.stderr
    assert len(second.stdout.split()) == 1
    assert dict(rows(db_path, "SELECT path, state FROM files")) == {"carol/IMG_0007.jpg": "seen", "carol/IMG_0008.jpg": "seen"}


def test_scan_exits_1_and_names_a_folder_it_cannot_list(tmp_path, db_path):
    inbox = tmp_path / "inbox"
    make(inbox / "alice" / "a.jpg", seed=18)
    make(inbox / "dave" / "d.jpg", seed=19)
    (inbox / "dave").chmod(0)
    try:
        r = imgq_cmd(tmp_path, "scan", "--settle", "0", inbox)
    finally:
        (inbox / "dave").chmod(0o755)
    assert r.returncode == 1
    assert f"{inbox}/dave: cannot list folder" in r.stderr
    assert len(r.stdout.split()) == 1  # the rest of the inbox was scanned


# ---- item 13 and 14: ids a case-insensitive or length-limited store can hold ----------------


def test_ids_differing_only_in_case_are_made_unique_case_folded(tmp_path, run_imgq):
    inbox = tmp_path / "inbox"
    make(inbox / "alice" / "IMG_1.JPG", seed=20)
    make(inbox / "alice" / "img_1.jpg", seed=21)
    make(inbox / "Alice" / "img_1.jpg", seed=22)
    r = run_imgq("scan", "--settle", "0", inbox)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 3 and len({i.casefold() for i in ids}) == 3
    make(inbox / "alice" / "Img_1.jpg", seed=23)  # a later scan checks the recorded ids too
    [later] = run_imgq("scan", "--settle", "0", inbox).stdout.split()
    assert later.casefold() not in {i.casefold() for i in ids}


def test_a_250_byte_name_is_processed(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    long_name = "P" * 246 + ".jpg"
    make(inbox / "erin" / long_name, seed=24)
    make(inbox / "erin" / ("P" * 245 + "Q.jpg"), seed=25)  # same first 110 bytes of id
    [a, b] = scan_and_enqueue(run_imgq, inbox)
    assert a != b and max(len(a.encode()), len(b.encode())) <= 120
    r = run_imgq("work", "--drain", "-j", "1", "--max-attempts", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted([a, b])
    for path, in rows(db_path, "SELECT path FROM artifacts"):
        assert all(len(part.encode()) <= 120 for part in path.split("/"))
        assert (tmp_path / "imgq-store" / path).is_file()


# ---- item 1: the store and destinations inside an inbox are never scanned ------------------------


def test_scan_skips_a_destination_recorded_in_the_database_inside_the_inbox(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    photo = make(inbox / "alice" / "IMG_0009.jpg", seed=26)
    [file_id] = run_imgq("scan", "--settle", "0", inbox).stdout.split()
    # an older imgq archived into inbox/backup and recorded it
    backup = inbox / "backup"
    copy = backup / "2024" / "2024-05-01" / "alice" / "IMG_0009.jpg"
    copy.parent.mkdir(parents=True)
    shutil.copy2(photo, copy)
    with sqlite3.connect(db_path) as c:
        c.execute(
            "INSERT INTO archive_targets (file_id, destination, attempts, not_before, created_at, updated_at) VALUES (?, ?, 0, 0, 0, 0)",
            (file_id, str(backup)),
        )
    # and a configured destination, spelled through a symlink to a folder in the inbox
    other = inbox / "mirror"
    shutil.copy2(photo, (other / "x").mkdir(parents=True) or other / "x" / "copy.jpg")
    (tmp_path / "link").symlink_to(inbox)
    (tmp_path / "imgq.toml").write_text(f'destinations = ["{tmp_path}/link/mirror"]\n')

    r = run_imgq("scan", "--settle", "0", "--json", inbox)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # neither a new photo nor a duplicate
    assert [p for (p,) in rows(db_path, "SELECT path FROM files")] == ["alice/IMG_0009.jpg"]


def test_an_inbox_that_is_itself_a_recorded_destination_is_not_scanned_and_says_so(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    make(inbox / "alice" / "IMG_0010.jpg", seed=27)
    [file_id] = run_imgq("scan", "--settle", "0", inbox).stdout.split()
    with sqlite3.connect(db_path) as c:  # `imgq run inbox --to inbox`, by an older imgq
        c.execute(
            "INSERT INTO archive_targets (file_id, destination, attempts, not_before, created_at, updated_at) VALUES (?, ?, 0, 0, 0, 0)",
            (file_id, str(inbox)),
        )
    shutil.copy2(inbox / "alice" / "IMG_0010.jpg", (inbox / "2024").mkdir() or inbox / "2024" / "IMG_0010.jpg")
    r = run_imgq("scan", "--settle", "0", inbox)
    assert r.returncode == 1 and r.stdout == ""
    assert "also imgq's store or an archive destination" in r.stderr
    assert rows(db_path, "SELECT count(*) FROM files") == [(1,)]


# ---- a missing inbox (a share not mounted) is retried, not failed ----------------------


def test_an_inbox_that_is_not_there_is_retried_not_failed(tmp_path, run_imgq, db_path):
    # The whole inbox missing is a share not mounted: the world may heal, so it is retried.
    inbox = tmp_path / "inbox"
    samples.make_photo(inbox / "alice" / "a.jpg", width=320, height=240, seed=3)
    scan_and_enqueue(run_imgq, inbox)
    inbox.rename(tmp_path / "unmounted")
    r = run_imgq("work", "-j1", "--once")
    [(state, kind)] = rows(db_path, "SELECT state, error_kind FROM jobs")
    assert (state, kind) == ("ready", "transient"), r.stderr


def test_an_inbox_named_twice_in_one_scan_is_read_and_recorded_once(tmp_path, run_imgq, db_path):
    """scan lists every inbox before it reads (so that a progress bar knows the total):
    the same inbox given twice, however spelled, must not be read twice and recorded as
    two photos."""
    inbox = tmp_path / "inbox"
    make(inbox / "alice" / "IMG_0001.jpg", seed=1)
    make(inbox / "bob" / "IMG_0002.jpg", seed=2)
    r = run_imgq("scan", "--settle", "0", inbox, inbox, tmp_path / "inbox" / ".." / "inbox")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 2, r.stdout
    assert rows(db_path, "SELECT count(*) FROM files") == [(2,)]
