"""The journal is not a single point of failure: snapshots at every destination, and a
database brought back from one with nothing redone and nothing lost."""

from __future__ import annotations

import gzip
import os
import sqlite3
from pathlib import Path

from imgq import samples
from sshhosts import ssh_hosts  # noqa: F401

CONFIG = "settle = 0\n"


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def q(db, sql, *args):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def snapshots(dest: Path) -> list[Path]:
    return sorted(dest.glob("imgq-journal/*/imgq-*.db.gz"))


def lose(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def test_run_leaves_a_snapshot_and_a_lost_database_comes_back_with_nothing_redone(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text(CONFIG)
    inbox, dest = tmp_path / "inbox", tmp_path / "backup"
    dest.mkdir()
    for i, owner in enumerate(("alice", "bob")):
        samples.make_photo(inbox / owner / f"IMG_{i}.jpg", seed=i, width=320, height=240)
    ok(run_imgq("run", inbox, "--to", dest))
    [snap] = snapshots(dest)
    [(database_id,)] = q(db_path, "SELECT value FROM meta WHERE key = 'database_id'")
    assert snap.parent.name == database_id
    ok(run_imgq("run", inbox, "--to", dest))
    assert snapshots(dest) == [snap], "a run that changed nothing makes no new snapshot"

    before = {t: q(db_path, f"SELECT count(*) FROM {t}")[0][0] for t in ("files", "jobs", "copies", "artifacts")}
    lose(db_path)
    r = ok(run_imgq("restore", "--from", dest))
    assert r.stdout.strip() == str(db_path)
    assert q(db_path, "PRAGMA integrity_check") == [("ok",)]
    assert {t: q(db_path, f"SELECT count(*) FROM {t}")[0][0] for t in before} == before
    events = q(db_path, "SELECT max(id) FROM events")[0][0]

    # carry on: nothing is redone, a new photo goes all the way
    samples.make_photo(inbox / "carol" / "IMG_9.jpg", seed=9, width=320, height=240)
    ok(run_imgq("run", inbox, "--to", dest))
    redone = q(db_path, "SELECT count(*) FROM events WHERE id > ? AND entity = 'job' AND to_state = 'done'", events)[0][0]
    assert redone == 1, "only the new photo's job ran"
    assert q(db_path, "SELECT count(*) FROM copies")[0][0] == before["copies"] + 3  # its original, thumb and web
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"collected"}
    assert not list(inbox.rglob("*.jpg"))


def test_restore_never_replaces_a_database_and_refuses_a_damaged_snapshot(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text(CONFIG)
    inbox, dest = tmp_path / "inbox", tmp_path / "backup"
    dest.mkdir()
    samples.make_photo(inbox / "alice" / "IMG_1.jpg", seed=1, width=320, height=240)
    ok(run_imgq("run", inbox, "--to", dest))
    [snap] = snapshots(dest)
    r = run_imgq("restore", snap)
    assert r.returncode == 2 and "never replaces" in r.stderr
    damaged = tmp_path / snap.name
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    r = run_imgq("restore", damaged, "--db", tmp_path / "new.db")
    assert r.returncode != 0 and str(damaged) in r.stderr and "damaged" in r.stderr
    assert not (tmp_path / "new.db").exists()
    ok(run_imgq("restore", snap, "--db", tmp_path / "new.db"))
    assert q(tmp_path / "new.db", "SELECT count(*) FROM files") == [(1,)]


def test_backup_keeps_the_newest_snapshots(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text(CONFIG)
    inbox, dest = tmp_path / "inbox", tmp_path / "backup"
    dest.mkdir()
    samples.make_photo(inbox / "alice" / "IMG_1.jpg", seed=1, width=320, height=240)
    ok(run_imgq("run", "--no-collect", inbox, "--to", dest))
    made = []
    for i in range(3):
        samples.make_photo(inbox / "alice" / f"more{i}.jpg", seed=10 + i, width=320, height=240)
        ok(run_imgq("scan", inbox))  # the journal changes
        made.append(ok(run_imgq("backup", "--to", dest, "--keep", "2")).stdout.strip())
        os.utime(db_path)  # a second apart in their names
        import time

        time.sleep(1.05)
    kept = snapshots(dest)
    assert [str(p) for p in kept] == made[-2:]
    with gzip.open(kept[-1]) as f:
        assert f.read(16) == b"SQLite format 3\x00"


def test_backup_to_and_restore_from_an_ssh_destination(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    url = f"ssh://{host.alias}{remote}"
    (tmp_path / "imgq.toml").write_text(CONFIG)
    inbox = tmp_path / "inbox"
    samples.make_photo(inbox / "alice" / "IMG_1.jpg", seed=1, width=320, height=240)
    ok(run_imgq("run", inbox, "--to", url, "--ssh-config", host.ssh_config))
    assert len(snapshots(remote)) == 1
    lose(db_path)
    ok(run_imgq("restore", "--from", url, "--ssh-config", host.ssh_config))
    assert q(db_path, "SELECT state FROM files") == [("collected",)]
