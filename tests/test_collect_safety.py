"""Collect's safety rests on identities, not names (issue 8).

- a destination that is, contains or lies inside an inbox is refused by archive, run and
  collect, however it is spelled (symlink, bind mount, ``/./``);
- collect never deletes an inbox file that is itself one of the copies it counts (a hard
  link, or a copy written inside the inbox), and never counts such a copy;
- the name is deleted only if it still is the object that was verified, at the moment of
  the deletion (a photo renamed over the original while collect waits for the database
  write lock survives); the wait for the lock is bounded;
- a duplicate whose twin fails is promoted and goes through the pipeline on its own;
- a full disk under the database is one line naming the database, and nothing is lost;
- a read-only inbox keeps its files, with a consistent state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import imgq_env
from imgq import original, samples
from imgq.ledger.database import DB, lock_path


def q(db_path, sql, *params):
    with contextlib.closing(sqlite3.connect(db_path)) as c:
        return c.execute(sql, params).fetchall()


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_ino) for p in sorted(Path(root).rglob("*"))}


def small_inbox(root: Path, **kw) -> samples.InboxSample:
    kw = {"photographers": ("alice", "bob"), "per_owner": 2, "size": (320, 240), "with_broken": False, "with_rotated": False, **kw}
    return samples.make_inbox(root, **kw)


@pytest.fixture
def archived(tmp_path, run_imgq, db_path):
    """An inbox (alice, bob; a duplicate) processed and archived to A and B; returns
    (inbox sample, {inbox path: file id}, A, B)."""
    inbox = small_inbox(tmp_path / "inbox")
    scan = run_imgq("scan", inbox)
    run_imgq("enqueue", "-", input=scan.stdout)
    assert run_imgq("work", "-j1").returncode == 0
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    r = run_imgq("archive", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    ids = {inbox.root / p: i for i, p in q(db_path, "SELECT id, path FROM files")}
    return inbox, ids, a, b


def copy_path(db_path, file_id, dest) -> Path:
    [(path,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND destination = ? AND artifact_id IS NULL", file_id, str(dest))
    return Path(dest) / path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgq: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@contextlib.contextmanager
def mounted(*commands: list[str]):
    """Run mount commands (as root); skip the test if mounting is not permitted here;
    unmount everything mounted on the way out."""
    targets = []
    try:
        for cmd in commands:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount here ({' '.join(cmd)}: {r.stderr.strip() or 'not permitted'})")
            if "remount" not in ",".join(cmd):
                targets.append(cmd[-1])
        yield
    finally:
        for t in reversed(targets):
            subprocess.run(["umount", "-l", t], capture_output=True)


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


# --------------------------------------------------------------------- item 1: overlap


def test_run_refuses_the_inbox_as_its_own_destination_and_loses_nothing(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path / "inbox")
    before = tree(inbox.root)
    for attempt in (1, 2):  # the second run used to delete the only copy
        r = run_imgq("run", inbox, "--to", inbox, "-j1")
        assert r.returncode == 2, (attempt, r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert line.count(str(inbox.root)) >= 2 and "inbox" in line
        assert tree(inbox.root) == before
    assert q(db_path, "SELECT count(*) FROM files WHERE state = 'collected'") == [(0,)]


@pytest.mark.parametrize("spelling", ["inside", "dot", "symlink-to-inbox", "inside-symlink", "contains", "double-slash"])
def test_archive_refuses_a_destination_overlapping_an_inbox_however_spelled(tmp_path, run_imgq, db_path, spelling):
    inbox = small_inbox(tmp_path / "inbox")
    assert run_imgq("scan", inbox).returncode == 0
    link = tmp_path / "link"
    link.symlink_to(inbox.root)
    dest = {
        "inside": f"{inbox.root}/backup",
        "dot": f"{inbox.root}/alice/./../backup",
        "symlink-to-inbox": str(link),
        "inside-symlink": f"{link}/bob/backup",
        "contains": str(tmp_path),
        "double-slash": f"{tmp_path}//inbox",
    }[spelling]
    before = tree(inbox.root)
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert str(inbox.root) in line and "destination" in line
    assert tree(inbox.root) == before  # nothing written into the inbox
    assert q(db_path, "SELECT count(*) FROM copies") == [(0,)]


@pytest.mark.skipif(not can_mount(), reason="bind mounts need root and mount(8)")
def test_a_bind_mount_of_the_inbox_is_recognised_by_device_and_inode(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path / "inbox")
    assert run_imgq("scan", inbox).returncode == 0
    other = tmp_path / "mnt" / "view"
    other.mkdir(parents=True)
    with mounted(["mount", "--bind", str(inbox.root), str(other)]):
        # no string comparison can tell: /…/mnt/view/backup is not below /…/inbox
        for dest in (other / "backup", other):
            r = run_imgq("archive", "--to", dest)
            assert r.returncode == 2, r.stderr
            assert str(inbox.root) in one_error_line(r.stderr)
        r = run_imgq("run", inbox, "--to", other / "alice", "-j1")
        assert r.returncode == 2 and str(other / "alice") in one_error_line(r.stderr)
    assert q(db_path, "SELECT count(*) FROM copies") == [(0,)]


def test_a_destination_beside_the_inbox_is_fine(tmp_path, run_imgq):
    inbox = small_inbox(tmp_path / "inbox", per_owner=1, with_duplicate=False, with_loose=False)
    (tmp_path / "inbox-backup").mkdir()  # a name sharing the inbox's prefix is not inside it
    r = run_imgq("run", inbox, "--to", tmp_path / "inbox-backup", "-j1")
    assert r.returncode == 0, r.stderr


def test_collect_refuses_a_destination_that_was_scanned_as_an_inbox(archived, run_imgq, db_path, tmp_path):
    # The reported sequence: copies at A, then A scanned (its copies become duplicates of
    # the originals); one collect used to delete the originals and then the copies.
    inbox, ids, a, b = archived
    # Today's scan refuses to scan a recorded destination; a database made by an older
    # imgq has such rows. Make them the way it did: scan A under another name, then give
    # the rows A's name back.
    aside = tmp_path / "A-scanned"
    a.rename(aside)
    assert run_imgq("scan", "--settle", "0", aside).returncode == 0
    aside.rename(a)
    with sqlite3.connect(db_path) as c:
        c.execute("UPDATE files SET inbox = ? WHERE inbox = ?", (str(a), str(aside)))
    assert q(db_path, "SELECT count(*) FROM files WHERE state = 'duplicate' AND inbox = ?", str(a))[0][0] >= len(ids) - 1
    before_a, before_inbox = tree(a), tree(inbox.root)
    for args in (["--to", a], ["--to", b, "--to", a], ["--min-copies", "1"]):
        r = run_imgq("collect", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert str(a) in one_error_line(r.stderr)
    assert r.stdout == ""
    assert tree(a) == before_a and tree(inbox.root) == before_inbox
    assert run_imgq("archive", "--to", a).returncode == 2  # nor written to again


def test_collect_never_deletes_a_file_that_is_the_copy_it_verified(archived, run_imgq, db_path, tmp_path):
    # The same state, reached through the library (no CLI check in front): the copies in
    # A are inbox files now, duplicates of the originals whose copies they are.
    from imgq import collect as collect_lib
    from imgq.ledger.database import DB
    from imgq.destinations import LocalDestination

    inbox, ids, a, b = archived
    # Today's scan refuses to scan a recorded destination; a database made by an older
    # imgq has such rows. Make them the way it did: scan A under another name, then give
    # the rows A's name back.
    aside = tmp_path / "A-scanned"
    a.rename(aside)
    assert run_imgq("scan", "--settle", "0", aside).returncode == 0
    aside.rename(a)
    with sqlite3.connect(db_path) as c:
        c.execute("UPDATE files SET inbox = ? WHERE inbox = ?", (str(a), str(aside)))
    copies = {p: p.read_bytes() for p in a.rglob("*.jpg") if ".thumb." not in p.name and ".web." not in p.name}
    assert copies
    db = DB(db_path)
    try:
        report = collect_lib.collect(db, {str(a): LocalDestination(a)}, required=[str(a)], clock=time.time)
    finally:
        db.close()
    for p, data in copies.items():
        assert p.exists() and p.read_bytes() == data, f"{p}: the only copy was deleted"
    kept = {v.path: v for v in report.verdicts if v.path.startswith(str(a))}
    assert kept and all(v.action == "keep" and "same file" in v.reason for v in kept.values()), kept
    assert not any(p.exists() for p in ids)  # the originals had a good, separate copy at A


def test_a_hard_link_of_the_inbox_file_is_not_an_independent_copy(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    alice1 = inbox.root / "alice" / "IMG_0001.jpg"
    at_b = copy_path(db_path, ids[alice1], b)
    at_b.unlink()
    os.link(alice1, at_b)  # B's "copy" is the inbox file itself
    r = run_imgq("collect", "--to", a, "--to", b, "--json")
    assert r.returncode == 1, r.stderr
    verdicts = {v["id"]: v for v in map(json.loads, r.stdout.splitlines())}
    v = verdicts[ids[alice1]]
    assert v["action"] == "keep" and "same file" in v["reason"] and str(b) in v["reason"]
    assert v["verified"] == [str(a)]  # one independent copy, not two
    assert alice1.exists()
    assert q(db_path, "SELECT state FROM files WHERE id = ?", ids[alice1]) == [("archived",)]
    # any two copies will do: still only one that is not the inbox file; and even when
    # one would do, a file that is one of its own copies is never deleted
    for n in ("2", "1"):
        r = run_imgq("collect", "--min-copies", n)
        assert ids[alice1] not in r.stdout.split() and "same file" in r.stderr
        assert alice1.exists() and at_b.exists()


# ------------------------------------------------------- item 2: replaced while collecting


def syscall(pid: int) -> str:
    """The system call a process is blocked in (a number), or 'running'."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return "gone"


def wait_for(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


SLEEPING = {"35", "230", "73"}  # nanosleep, clock_nanosleep, flock (x86-64 numbers)

# collect in a process of its own, as `imgq collect --json ID` runs it but without the
# write that records the run: its first write is the deletion, so a test holding the
# write lock from the start stops it exactly there.
COLLECT = """
import json, sys, time
from imgq import collect
from imgq.ledger.database import DB
from imgq.destinations import LocalDestination
db, file_id, *dests = sys.argv[1:]
report = collect.collect(DB(db), {d: LocalDestination(d) for d in dests}, required=dests, file_ids=[file_id], clock=time.time)
for v in report.verdicts:
    print(json.dumps({"action": v.action, "reason": v.reason}))
"""


@pytest.mark.skipif(not Path("/proc/self/syscall").exists() or os.uname().machine != "x86_64", reason="needs /proc/PID/syscall on x86-64")
@pytest.mark.parametrize("swap", ["new photo", "symlink"])
def test_a_file_replaced_while_collect_waits_for_the_write_lock_survives(archived, db_path, tmp_path, photo, swap):
    inbox, ids, a, b = archived
    target = inbox.root / "bob" / "IMG_0002.jpg"
    file_id = ids[target]
    newcomer = photo("new.jpg", seed=4242)
    new_bytes = newcomer.read_bytes()
    outside = tmp_path / "outside.jpg"
    shutil.copy2(target, outside)
    outside_bytes = outside.read_bytes()

    # Another process holds the database's write lock: imgq's flock and SQLite's.
    lock = os.open(lock_path(db_path, "write"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    proc = subprocess.Popen(
        [sys.executable, "-c", COLLECT, db_path, file_id, a, b],
        cwd=tmp_path, env=imgq_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        # It checks the copies and the file, then waits for the lock to record the deletion.
        wait_for(lambda: syscall(proc.pid) in SLEEPING, "collect waits for the write lock to delete")
        if swap == "new photo":
            os.rename(newcomer, target)  # a new, never-scanned photo arrives under the name
        else:
            tmp_link = target.with_name(".swap")
            tmp_link.symlink_to(outside)
            os.rename(tmp_link, target)
        holder.execute("COMMIT")
        fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.close()
        os.close(lock)
    assert proc.returncode == 0, err
    if swap == "new photo":
        assert target.is_file() and not target.is_symlink() and target.read_bytes() == new_bytes
    else:
        assert target.is_symlink() and os.readlink(target) == str(outside)
        assert outside.read_bytes() == outside_bytes  # nothing outside the inbox is touched
    [verdict] = [json.loads(line) for line in out.splitlines()]
    assert verdict["action"] == "keep" and "replaced in the inbox while being collected" in verdict["reason"]
    assert q(db_path, "SELECT state FROM files WHERE id = ?", file_id) == [("archived",)]
    assert q(db_path, "SELECT count(*) FROM events WHERE file_id = ? AND to_state = 'collected'", file_id) == [(0,)]
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".imgq-collect")]  # no quarantine name left


def test_the_wait_for_the_write_lock_is_bounded(archived, db_path):
    from imgq import collect as collect_lib
    from imgq.ledger.database import DB
    from imgq.destinations import LocalDestination
    from imgq.errors import DatabaseBusy

    inbox, ids, a, b = archived
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    db = DB(db_path)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseBusy) as caught:
            collect_lib.collect(db, {str(a): LocalDestination(a)}, required=[str(a)], clock=time.time, lock_timeout=1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.close()
    assert time.monotonic() - started < 20
    assert str(db_path) in str(caught.value) and "locked" in str(caught.value)
    assert all(p.exists() for p in ids)
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} <= {"archived", "duplicate"}


# --------------------------------------------------- item 8a: a duplicate's twin fails


def test_a_duplicate_whose_twin_changed_in_the_inbox_is_processed_by_the_next_run(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path / "inbox", per_owner=1, with_loose=False)
    twin, dup = inbox["duplicate"]["original"], inbox["duplicate"]["copy"]
    old_bytes = dup.read_bytes()
    assert run_imgq("scan", inbox).returncode == 0
    [(dup_id, twin_id)] = q(db_path, "SELECT id, duplicate_of FROM files WHERE state = 'duplicate'")
    # The twin is edited in the inbox before it was archived: its scanned content now
    # exists only in the duplicate.
    samples.make_photo(twin, width=320, height=240, seed=999)
    os.utime(twin, (time.time() - 600, time.time() - 600))
    a = tmp_path / "A"
    a.mkdir()
    r = run_imgq("run", inbox, "--to", a, "-j1")
    assert r.returncode == 0, r.stderr
    assert q(db_path, "SELECT state FROM files WHERE id = ?", twin_id) == [("failed",)]
    assert q(db_path, "SELECT state, duplicate_of FROM files WHERE id = ?", dup_id) == [("collected", None)]
    log = run_imgq("log", dup_id).stdout
    assert "duplicate -> seen" in log and twin_id in log
    # its content reached the archive before it left the inbox
    assert not dup.exists()
    [(rel,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND artifact_id IS NULL", dup_id)
    assert (a / rel).read_bytes() == old_bytes
    again = run_imgq("run", inbox, "--to", a, "-j1")
    assert again.returncode == 0 and again.stdout == "", again.stderr


def test_a_duplicate_whose_twin_job_fails_for_good_is_finished_by_imgq_run(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path / "inbox", per_owner=1, with_loose=False)
    (tmp_path / "imgq.toml").write_text("max_attempts = 1\n")
    twin, dup = inbox["duplicate"]["original"], inbox["duplicate"]["copy"]
    third = inbox.root / "carol" / "another copy.jpg"  # two duplicates of the same twin
    third.parent.mkdir()
    shutil.copy2(dup, third)
    old_bytes = dup.read_bytes()
    assert run_imgq("scan", inbox).returncode == 0
    twin_id = q(db_path, "SELECT id FROM files WHERE path = ?", str(twin.relative_to(inbox.root)))[0][0]
    twin.unlink()  # gone before it was processed: its job cannot succeed
    a = tmp_path / "A"
    a.mkdir()
    first = run_imgq("run", inbox, "--to", a, "-j1")
    assert first.returncode == 1  # the twin's job failed, and says so
    assert q(db_path, "SELECT state FROM files WHERE id = ?", twin_id) == [("failed",)]
    second = run_imgq("run", inbox, "--to", a, "-j1")
    assert second.returncode == 0, second.stderr
    states = dict(q(db_path, "SELECT path, state FROM files"))
    assert states.pop(str(twin.relative_to(inbox.root))) == "failed"
    assert set(states.values()) == {"collected"}, states
    # exactly one of the two duplicates was promoted and archived; the other followed it
    promoted = q(db_path, "SELECT file_id FROM copies WHERE artifact_id IS NULL AND sha256 = ?", inbox["sha256"][dup])
    assert len(promoted) == 1
    [(rel,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND artifact_id IS NULL", promoted[0][0])
    assert (a / rel).read_bytes() == old_bytes
    assert not dup.exists() and not third.exists()


# ------------------------------------------------------------- item 18a: a full disk


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` until only about ``leave`` bytes are free."""
    filler = disk / "filler"
    vfs = os.statvfs(disk)
    room = max(0, vfs.f_bavail * vfs.f_frsize - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while room > 0:
            room -= os.write(fd, b"\0" * min(room, 1 << 16))
    except OSError:
        pass  # full already
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(not can_mount(), reason="a tiny tmpfs needs root and mount(8)")
@pytest.mark.parametrize("free", [0, 100 * 1024], ids=["full-before-the-step", "fills-during-the-step"])
def test_a_full_disk_under_the_database_is_one_line_and_loses_nothing(tmp_path, run_imgq, free):
    inbox = small_inbox(tmp_path / "inbox", photographers=("alice", "bob", "carol", "dave"), per_owner=60, size=(64, 48))
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]):
        db = disk / "imgq.db"
        DB(db).close()  # the database exists
        filler = fill(disk, free)
        before = tree(inbox.root)
        r = run_imgq("scan", "--db", db, inbox)
        assert r.returncode == 1, (r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert str(db) in line and "full" in line
        assert tree(inbox.root) == before
        filler.unlink()
        recorded = set(r.stdout.split())  # what it printed, it recorded
        assert recorded <= {i for (i,) in q(db, "SELECT id FROM files")}
        again = run_imgq("scan", "--db", db, inbox)
        assert again.returncode == 0, again.stderr
        assert q(db, "PRAGMA integrity_check") == [("ok",)]
        assert q(db, "SELECT count(*) FROM files")[0][0] == len(inbox["photos"])
        assert not recorded & set(again.stdout.split())


# ------------------------------------------------- kept: a read-only inbox


@pytest.mark.skipif(not can_mount(), reason="a read-only bind mount needs root and mount(8)")
def test_a_read_only_inbox_keeps_its_files_and_a_consistent_state(archived, run_imgq, db_path):
    inbox, ids, a, b = archived
    root = str(inbox.root)
    with mounted(["mount", "--bind", root, root], ["mount", "-o", "remount,ro,bind", root]):
        before = tree(inbox.root)
        r = run_imgq("collect", "--to", a, "--to", b)
        assert r.returncode == 1 and r.stdout == ""
        assert "Read-only file system" in r.stderr
        assert tree(inbox.root) == before
        assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"archived", "duplicate"}
        assert q(db_path, "SELECT count(*) FROM events WHERE to_state = 'collected'") == [(0,)]
        status = json.loads(run_imgq("status", "--json").stdout)
        assert status["collect"]["keep"] == len(ids)
    r = run_imgq("collect", "--to", a, "--to", b)  # writable again: all go
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids.values())


def test_a_collect_killed_between_quarantine_and_unlink_costs_a_retry_not_a_hidden_original(archived, run_imgq, db_path):
    # collect renames the original to a quarantine name, checks it is the verified object,
    # then unlinks it inside the transaction that records 'collected'. A SIGKILL between
    # the rename and the commit leaves the original under that hidden name with the
    # journal still saying 'archived': the next collect must give it its name back and
    # then collect it as usual, and never report it 'already gone'.
    inbox, ids, a, b = archived
    target = next(p for p in ids if p.parent.name == "alice")
    want = sha(target)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid whose process is gone, as a killed collect's is
    hidden = target.parent / f"{original.quarantine_prefix(target.name)}{dead.pid}-0123456789ab{original.QUARANTINE_MARK}"
    target.rename(hidden)
    r = run_imgq("collect", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    assert ids[target] in r.stdout.split()
    [(detail,)] = q(db_path, "SELECT detail FROM events WHERE file_id = ? AND to_state = 'collected'", ids[target])
    assert "already gone" not in detail and "deleted" in detail
    assert not hidden.exists() and not target.exists()
    assert sha(copy_path(db_path, ids[target], a)) == want


def test_a_live_collects_quarantine_name_is_left_alone(tmp_path):
    # Another collect that is alive may be between its rename and its check: its
    # quarantine file is not ours to move back.
    folder = tmp_path / "inbox" / "alice"
    folder.mkdir(parents=True)
    hidden = folder / f"{original.quarantine_prefix('p.jpg')}{os.getppid()}-0123456789ab{original.QUARANTINE_MARK}"
    hidden.write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        original.Original(tmp_path / "inbox", "alice/p.jpg")
    assert hidden.exists() and not (folder / "p.jpg").exists()
