"""Hostile inboxes that imgq already handles, kept so by a test each (issue: safety on
identities): deep folders, many empty files, a FIFO present at scan time, newlines and
other shell characters in names, spaces in the database path."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from imgq import samples

from conftest import imgq_env


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old(path: Path) -> Path:
    """Make a file look settled (scan skips files still being written)."""
    t = os.stat(path).st_mtime - 600
    os.utime(path, (t, t))
    return path


def test_folders_200_deep_are_scanned_processed_archived_and_collected(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    deep = inbox / "alice" / os.path.join(*(["d"] * 200))
    deep.mkdir(parents=True)
    photo = old(samples.make_photo(deep / "deep.jpg", width=320, height=240, seed=3))
    want = sha(photo)
    a = tmp_path / "A"
    a.mkdir()
    r = run_imgq("run", inbox, "--to", a)
    assert r.returncode == 0, r.stderr
    assert q(db_path, "SELECT owner, state FROM files") == [("alice", "collected")]
    [copy] = [p for p in a.rglob("deep.jpg")]
    assert sha(copy) == want and not photo.exists()


def test_ten_thousand_empty_files_are_failed_once_each_without_stopping_the_scan(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    folder = inbox / "bob"
    folder.mkdir(parents=True)
    for i in range(10_000):
        (folder / f"empty{i:05}.jpg").touch()
        old(folder / f"empty{i:05}.jpg")
    real = old(samples.make_photo(folder / "real.jpg", width=320, height=240, seed=4))
    r = run_imgq("scan", inbox, timeout=300)
    assert r.returncode in (0, 1), r.stderr  # empty files are reported failures, not a crash
    assert len(r.stdout.split()) == 1  # stdout: the ids of new photos; the failures go to stderr
    assert r.stderr.count("empty file (0 bytes)") == 10_000
    states = dict(q(db_path, "SELECT state, count(*) FROM files GROUP BY state"))
    assert states == {"failed": 10_000, "seen": 1}
    [(err,)] = q(db_path, "SELECT DISTINCT error FROM files WHERE state = 'failed' LIMIT 1")
    assert "empty" in err.lower()
    again = run_imgq("scan", inbox, timeout=300)  # a rescan of an unchanged tree records nothing new
    assert again.stdout == "" and q(db_path, "SELECT count(*) FROM files") == [(10_001,)]
    assert real.exists()


def test_a_fifo_present_at_scan_time_is_skipped_and_does_not_hang(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    (inbox / "carol").mkdir(parents=True)
    os.mkfifo(inbox / "carol" / "pipe.jpg")
    old(samples.make_photo(inbox / "carol" / "ok.jpg", width=320, height=240, seed=5))
    r = run_imgq("scan", inbox, timeout=30)
    assert r.returncode in (0, 1), r.stderr
    assert q(db_path, "SELECT path, state FROM files") == [("carol/ok.jpg", "seen")]


def test_names_with_newlines_quotes_and_shell_characters_go_through_the_whole_pipeline(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    names = ["new\nline.jpg", "it's \"quoted\".jpg", "$(touch PWNED).jpg", "-rf .jpg", "tab\there.jpg", "a;b|c&d.jpg"]
    (inbox / "dave").mkdir(parents=True)
    want = {}
    for i, name in enumerate(names):
        want[name] = sha(old(samples.make_photo(inbox / "dave" / name, width=320, height=240, seed=10 + i)))
    a = tmp_path / "A"
    a.mkdir()
    r = run_imgq("run", inbox, "--to", a)
    assert r.returncode == 0, r.stderr
    assert dict(q(db_path, "SELECT state, count(*) FROM files GROUP BY state")) == {"collected": len(names)}
    archived = {p.name: sha(p) for p in a.rglob("*") if p.is_file() and ".thumb." not in p.name and ".web." not in p.name and "imgq-journal" not in p.parts}
    assert sorted(archived.values()) == sorted(want.values())
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))


def test_a_database_path_with_spaces_works_for_every_step(tmp_path):
    inbox = samples.make_inbox(tmp_path / "in box", photographers=("eve",), per_owner=2, size=(320, 240), with_broken=False, with_rotated=False)
    db = tmp_path / "my data" / "the imgq.db"
    db.parent.mkdir()
    a = tmp_path / "archive one"
    a.mkdir()

    def imgq(*args):
        return subprocess.run([sys.executable, "-m", "imgq", *map(str, args), "--db", str(db)], cwd=tmp_path, env=imgq_env(),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)

    r = imgq("run", inbox.root, "--to", a)
    assert r.returncode == 0, r.stderr
    assert db.exists()
    assert [s for (s,) in q(db, "SELECT DISTINCT state FROM files")] == ["collected"]
    assert imgq("status").returncode == 0
