"""imgq collect: an original leaves the inbox only when its copies are verified now and the
file is still the one scanned; nothing outside the inbox is ever deleted or followed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from imgq import samples


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def archived(tmp_path, run_imgq, db_path):
    """An inbox (alice, bob; a duplicate) processed and archived to A and B; returns
    (inbox sample, {inbox path: file id}, A, B)."""
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice", "bob"), per_owner=2, size=(320, 240), with_broken=False, with_rotated=False)
    scan = run_imgq("scan", inbox)
    run_imgq("enqueue", "-", input=scan.stdout)
    assert run_imgq("work", "-j2").returncode == 0
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    r = run_imgq("archive", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    ids = {inbox.root / p: i for i, p in q(db_path, "SELECT id, path FROM files")}
    return inbox, ids, a, b


def copy_path(db_path, file_id, dest) -> Path:
    [(path,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND destination = ? AND artifact_id IS NULL", file_id, str(dest))
    return Path(dest) / path


def test_collect_deletes_verified_originals_and_their_duplicates_and_keeps_folders(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    dry = run_imgq("collect", "--to", a, "--to", b, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()) == sorted(ids.values())
    assert "would delete" in dry.stderr and "2 verified copies" in dry.stderr
    assert all(p.exists() for p in ids)  # a dry run deletes nothing
    assert q(db_path, "SELECT count(*) FROM collect_checks") == [(0,)]

    events = q(db_path, "SELECT count(*) FROM events")[0][0]
    r = run_imgq("collect", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids.values())
    assert not any(p.exists() for p in ids)
    assert (inbox.root / "alice").is_dir() and (inbox.root / "alice" / "day2").is_dir() and (inbox.root / "bob").is_dir()
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"collected"}
    assert q(db_path, "SELECT count(*) FROM events")[0][0] == events + len(ids)
    dup = ids[inbox["duplicate"]["copy"]]
    log = run_imgq("log", dup).stdout
    assert "duplicate -> collected" in log and "2 verified copies" in log
    again = run_imgq("collect", "--to", a, "--to", b)
    assert again.returncode == 0 and again.stdout == ""
    assert q(db_path, "SELECT count(*) FROM events")[0][0] == events + len(ids)


def test_a_duplicate_waits_for_its_twin(tmp_path, run_imgq, db_path):
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice", "bob"), per_owner=1, size=(320, 240), with_broken=False, with_rotated=False, with_loose=False)
    run_imgq("scan", inbox)
    (tmp_path / "A").mkdir()
    r = run_imgq("collect", "--to", tmp_path / "A", "--json")
    assert r.returncode == 0
    verdicts = {v["path"]: v for v in map(json.loads, r.stdout.splitlines())}
    assert verdicts[str(inbox["duplicate"]["copy"])]["action"] == "wait"
    assert "not archived yet" in verdicts[str(inbox["duplicate"]["copy"])]["reason"]
    assert inbox["duplicate"]["copy"].exists()


def test_fewer_than_n_verified_copies_deletes_nothing(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    alice1 = ids[inbox.root / "alice" / "IMG_0001.jpg"]
    copy_path(db_path, alice1, b).unlink()  # one of its two copies is gone
    r = run_imgq("collect", "--min-copies", "2", "--dry-run")
    assert alice1 not in r.stdout.split() and "is missing" in r.stderr
    kept = {alice1, ids[inbox["duplicate"]["copy"]]}  # its duplicate shares its copies
    r = run_imgq("collect", "--min-copies", "3")
    assert r.returncode == 1 and r.stdout == ""  # no file has three
    assert all(p.exists() for p in ids)
    status = json.loads(run_imgq("status", "--json").stdout)
    assert status["collect"]["wait"] == len(ids) - 2 and status["collect"]["keep"] == 2
    assert {k["file_id"] for k in status["collect"]["reasons"] if k["verdict"] == "keep"} == kept
    assert all("missing" in k["reason"] for k in status["collect"]["reasons"] if k["verdict"] == "keep")

    r = run_imgq("collect", "--min-copies", "2")
    assert r.returncode == 1
    assert set(r.stdout.split()) == set(ids.values()) - kept
    assert (inbox.root / "alice" / "IMG_0001.jpg").exists() and inbox["duplicate"]["copy"].exists()

    # one good copy is enough when asked for one
    r = run_imgq("collect", "--min-copies", "1")
    assert r.returncode == 0 and set(r.stdout.split()) == kept
    assert not (inbox.root / "alice" / "IMG_0001.jpg").exists()
    assert json.loads(run_imgq("status", "--json").stdout)["collect"] == {"keep": 0, "wait": 0, "reasons": []}


def test_a_file_changed_after_scanning_is_not_deleted(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    rewritten = inbox.root / "alice" / "IMG_0001.jpg"
    touched = inbox.root / "bob" / "IMG_0001.jpg"
    # same size, same mtime, different bytes: only the hash can tell
    st = rewritten.stat()
    data = bytearray(rewritten.read_bytes())
    data[-100] ^= 0x55
    rewritten.write_bytes(bytes(data))
    os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(touched)  # a sync client re-wrote it: mtime differs
    r = run_imgq("collect", "--to", a, "--to", b)
    assert r.returncode == 1
    assert rewritten.exists() and touched.exists()
    assert rewritten.read_bytes() == bytes(data)
    assert "sha256 differs" in r.stderr and "mtime" in r.stderr
    assert ids[rewritten] not in r.stdout.split() and ids[touched] not in r.stdout.split()
    assert q(db_path, "SELECT state FROM files WHERE id = ?", ids[rewritten]) == [("archived",)]


def test_a_symlinked_owner_folder_or_file_is_never_followed(archived, run_imgq, db_path, tmp_path):
    inbox, ids, a, b = archived
    # alice's folder is swapped for a symlink to a look-alike outside the inbox: same
    # names, same bytes, same mtimes. Deleting through it would delete the outside files.
    outside = tmp_path / "outside"
    shutil.copytree(inbox.root / "alice", outside / "alice", copy_function=shutil.copy2)
    shutil.rmtree(inbox.root / "alice")
    (inbox.root / "alice").symlink_to(outside / "alice")
    # bob's photo is swapped for a symlink to an identical file outside
    bob1 = inbox.root / "bob" / "IMG_0001.jpg"
    shutil.copy2(bob1, outside / "bob1.jpg")
    bob1.unlink()
    bob1.symlink_to(outside / "bob1.jpg")
    before = tree(outside)

    r = run_imgq("collect", "--to", a, "--to", b)
    assert r.returncode == 1
    assert "symlink" in r.stderr
    assert tree(outside) == before  # nothing outside the inbox was deleted
    assert (inbox.root / "alice").is_symlink() and bob1.is_symlink()
    refused = {i for p, i in ids.items() if p.is_relative_to(inbox.root / "alice") or p == bob1}
    assert not refused & set(r.stdout.split())
    for file_id in refused:
        [(state, verdict, reason)] = q(db_path, "SELECT f.state, c.verdict, c.reason FROM files f JOIN collect_checks c ON c.file_id = f.id WHERE f.id = ?", file_id)
        assert state == "archived" and verdict == "keep" and "symlink" in reason


def test_a_file_already_gone_from_the_inbox_is_collected_without_deleting_anything(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    gone = inbox.root / "bob" / "IMG_0002.jpg"
    gone.unlink()
    r = run_imgq("collect", "--to", a, "--to", b, "--json")
    assert r.returncode == 0
    verdicts = {v["id"]: v for v in map(json.loads, r.stdout.splitlines())}
    assert verdicts[ids[gone]]["action"] == "gone"
    assert q(db_path, "SELECT state FROM files WHERE id = ?", ids[gone]) == [("collected",)]


def test_collect_needs_to_know_what_to_require(tmp_path, run_imgq):
    r = run_imgq("collect")
    assert r.returncode == 2 and "--min-copies" in r.stderr
    assert run_imgq("collect", "--min-copies", "0").returncode == 2
