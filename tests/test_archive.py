"""imgq archive: layout, verified copies, names that never collide, faults at the
destination (SIGKILL mid-copy, a full disk, corruption), and ssh:// destinations, with
real files, real processes, a real tmpfs and a real sshd."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import imgq_env
from imgq import archive_names, samples
from imgq.destinations import DestinationUnavailable, Found, LocalDestination, SourceUnavailable, SshOptions, canonical, open_destination, parse_ssh_url
from imgq.errors import InvalidTransition, StorageError, UsageError
from imgq.ledger import archive_targets
from imgq.ledger.database import DB
from sshhosts import ssh_hosts  # noqa: F401


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root: relative path -> (size, mtime_ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def process(run_imgq, inbox, *scan_args) -> list[str]:
    """scan | enqueue | work on the inbox; returns the processed ids."""
    scan = run_imgq("scan", *scan_args, inbox)
    run_imgq("enqueue", "-", input=scan.stdout)
    work = run_imgq("work", "-j2")
    return work.stdout.split()


def small_inbox(tmp_path, **kw):
    kw.setdefault("per_owner", 2)
    kw.setdefault("size", (320, 240))
    return samples.make_inbox(tmp_path / "inbox", **kw)


# --- pure layout rules -------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["..", ".", "../../etc", "a/b", "-rf", "$(touch PWNED)", "", " ", ".hidden", "`id`", "a\nb", "..."])
def test_hostile_owner_names_become_one_safe_component(owner):
    name = archive_names.safe_component(owner)
    assert name and "/" not in name and name not in (".", "..")
    assert not name.startswith(("-", ".")) and "$" not in name and "`" not in name and "\n" not in name
    folder = archive_names.folder_for("2024-05-17T08:00:00", owner)
    assert folder.startswith("2024/2024-05-17/") and folder.count("/") == 2


def test_folder_and_names():
    assert archive_names.folder_for("2024-05-17T23:59:59", "alice") == "2024/2024-05-17/alice"
    assert archive_names.folder_for("not a date", "alice") == "undated/undated/alice"
    digest = "ab" * 32
    assert archive_names.name_candidates("IMG_0001.JPG", digest) == ["IMG_0001.JPG", f"IMG_0001-{digest[:8]}.JPG", f"IMG_0001-{digest}.JPG"]
    long = archive_names.name_candidates("x" * 250 + ".jpg", digest)
    assert all(len(n.encode()) <= archive_names.NAME_BYTES and n.endswith(".jpg") for n in long) and len(set(long)) == 3
    assert archive_names.artifact_rel("2024/2024-05-17/alice/IMG_0001.jpg", "thumb", ".jpg") == "2024/2024-05-17/alice/IMG_0001.thumb.jpg"


def test_destination_texts():
    assert canonical("ssh://alice@nas:2222/srv/photos/") == "ssh://alice@nas:2222/srv/photos"
    assert parse_ssh_url("ssh://nas/~/photos")[1] == "photos"
    assert canonical("rel/dir") == os.path.abspath("rel/dir")
    for bad in ("ftp://x/y", "ssh://nas", "ssh://-oProxyCommand=x/p", "ssh://nas/a/../b"):
        with pytest.raises(UsageError):
            canonical(bad)


# --- the destination contract, for both backends ---------------------------------------------


@pytest.fixture(params=["local", "ssh"])
def destination(request, tmp_path):
    """(Destination, its root on this machine): a local folder, or the same kind of folder
    behind a real sshd on a loopback address."""
    root = tmp_path / "dest"
    root.mkdir()
    if request.param == "local":
        d = LocalDestination(root)
    else:
        [host] = request.getfixturevalue("ssh_hosts")(1)
        d = open_destination(f"ssh://{host.alias}{root}", SshOptions(config=host.ssh_config))
    yield d, root
    d.close()


def test_destination_contract(destination, tmp_path):
    dest, root = destination
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    digest, size = sha(src), src.stat().st_size
    rel = "2024/2024-01-02/-rf/$(touch PWNED) x.jpg"
    assert dest.check([rel]) == {rel: None}
    (root / "2024" / "2024-01-02" / "-rf").mkdir(parents=True)
    leftover = root / "2024" / "2024-01-02" / "-rf" / ".$(touch PWNED) x.jpg.999999-deadbeef.imgq-tmp"
    leftover.write_bytes(b"half a copy from a killed run")
    dest.put(src, rel, sha256=digest, size=size)
    assert (root / rel).read_bytes() == src.read_bytes()
    assert not leftover.exists() and not list(root.rglob("*.imgq-tmp*")) and not list(tmp_path.rglob("PWNED"))
    assert dest.check([rel, "2024/nothing.jpg"]) == {rel: Found(size, digest), "2024/nothing.jpg": None}
    # the source no longer has the bytes we were told: nothing lands
    with pytest.raises(SourceUnavailable):
        dest.put(src, "2024/other.jpg", sha256="0" * 64, size=size)
    assert not (root / "2024" / "other.jpg").exists() and not list(root.rglob("*.imgq-tmp*"))
    with pytest.raises(SourceUnavailable):
        dest.put(tmp_path / "missing.jpg", "2024/other.jpg", sha256=digest, size=size)
    # a symlink inside the destination is neither written nor read through
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(StorageError, match="symlink"):
        dest.put(src, "link/x.jpg", sha256=digest, size=size)
    assert list(outside.iterdir()) == []
    (outside / "y.jpg").write_bytes(src.read_bytes())
    assert dest.check(["link/y.jpg"]) == {"link/y.jpg": None}
    back = tmp_path / "back.bin"
    dest.fetch(rel, back)
    assert back.read_bytes() == src.read_bytes()
    assert dest.free_bytes() > size


# --- archiving end to end --------------------------------------------------------------------


def test_archive_copies_verified_in_layout_and_twice_changes_nothing(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path)
    ids = process(run_imgq, inbox)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    r = run_imgq("archive", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids)
    assert {s for (s,) in q(db_path, "SELECT state FROM files WHERE id IN (%s)" % ",".join("?" * len(ids)), *ids)} == {"archived"}

    # alice/IMG_0001.jpg, taken 2024-05-17 08:00: the original under its name, artifacts beside it
    original = inbox / "alice" / "IMG_0001.jpg"
    for dest in (a, b):
        folder = dest / "2024" / "2024-05-17" / "alice"
        assert (folder / "IMG_0001.jpg").read_bytes() == original.read_bytes()
        assert {p.name for p in folder.glob("IMG_0001*")} == {"IMG_0001.jpg", "IMG_0001.thumb.jpg", "IMG_0001.web.jpg"}
        assert not list(dest.rglob("*.imgq-tmp*"))
        # bob and carol have an IMG_0001.jpg too, on other days or in their own folders
        assert len(list(dest.rglob("IMG_0001.jpg"))) == 3
    # every copy is recorded with the hash of what is at the destination
    rows = q(db_path, "SELECT destination, path, sha256, bytes, verified_at FROM copies")
    assert len(rows) == len(ids) * 3 * 2
    for dest, path, digest, size, verified in rows:
        assert sha(Path(dest) / path) == digest and (Path(dest) / path).stat().st_size == size and verified
    # the web version at the destination is the artifact in the store
    [(store_path,)] = q(db_path, "SELECT a.path FROM artifacts a JOIN files f ON f.id = a.file_id WHERE f.path = 'alice/IMG_0001.jpg' AND a.name = 'web'")
    assert sha(tmp_path / "imgq-store" / store_path) == sha(a / "2024" / "2024-05-17" / "alice" / "IMG_0001.web.jpg")

    before = tree(a), tree(b), q(db_path, "SELECT count(*) FROM events"), q(db_path, "SELECT * FROM copies")
    again = run_imgq("archive", "--to", a, "--to", b)
    assert again.returncode == 0 and again.stdout == ""
    assert (tree(a), tree(b), q(db_path, "SELECT count(*) FROM events"), q(db_path, "SELECT * FROM copies")) == before
    log = run_imgq("log", ids[0]).stdout
    assert "processed -> archived" in log


def test_same_name_same_day_never_overwrites_and_same_photo_is_not_copied_twice(tmp_path, run_imgq, db_path):
    day = datetime(2024, 6, 1, 10, 0, 0)
    root = tmp_path / "inbox"
    first = samples.make_photo(root / "alice" / "IMG_1.jpg", width=320, height=240, seed=1, taken=day)
    second = samples.make_photo(root / "alice" / "card2" / "IMG_1.jpg", width=320, height=240, seed=2, taken=day)
    third = samples.make_photo(root / "alice" / "IMG_2.jpg", width=320, height=240, seed=3, taken=day)
    fourth = samples.make_photo(root / "alice" / "IMG_3.jpg", width=320, height=240, seed=4, taken=day)
    for p in (first, second, third, fourth):
        os.utime(p, (1e9, 1e9))
    dest = tmp_path / "A"
    folder = dest / "2024" / "2024-06-01" / "alice"
    folder.mkdir(parents=True)
    # someone else's file already has IMG_2.jpg's name; IMG_3.jpg is already there, same bytes
    (folder / "IMG_2.jpg").write_bytes(b"not ours")
    (folder / "IMG_3.jpg").write_bytes(fourth.read_bytes())
    os.utime(folder / "IMG_3.jpg", (1e9, 1e9))
    ids = process(run_imgq, root)
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids)
    names = {p.name: sha(p) for p in folder.iterdir()}
    assert names["IMG_1.jpg"] == sha(first)
    assert names[f"IMG_1-{sha(second)[:8]}.jpg"] == sha(second)
    assert f"IMG_1-{sha(second)[:8]}.thumb.jpg" in names
    assert (folder / "IMG_2.jpg").read_bytes() == b"not ours"
    assert names[f"IMG_2-{sha(third)[:8]}.jpg"] == sha(third)
    assert (folder / "IMG_3.jpg").stat().st_mtime == 1e9  # recorded as a copy, not copied again
    assert q(db_path, "SELECT count(*) FROM copies WHERE path = '2024/2024-06-01/alice/IMG_3.jpg'") == [(1,)]
    counts = json.loads(q(db_path, "SELECT counts FROM runs WHERE command = 'archive'")[0][0])
    assert counts["found"] == 1 and counts["archived"] == 4


def test_hostile_owner_folders_and_names_stay_inside_the_destination(tmp_path, run_imgq, db_path):
    root = tmp_path / "box" / "inbox"
    owners = ["-rf", "$(touch PWNED)", "|x>y", "a b;c", "Zoë"]
    for i, owner in enumerate(owners):
        samples.make_photo(root / owner / f"--{i}$(id).jpg", width=200, height=150, seed=i, taken=datetime(2024, 1, 2))
    samples.make_photo(root / "loose.jpg", width=200, height=150, seed=99, taken=datetime(2024, 1, 2))
    for p in root.rglob("*.jpg"):
        os.utime(p, (1e9, 1e9))
    # files at the root belong to the default owner: make it a path that tries to climb out
    ids = process(run_imgq, root, "--default-owner", "../../../escaped")
    assert len(ids) == len(owners) + 1
    dest = tmp_path / "box" / "dest"
    dest.mkdir()
    outside_before = {p for p in tmp_path.rglob("*") if dest not in p.parents and p != dest}
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 0, r.stderr
    outside_after = {p for p in tmp_path.rglob("*") if dest not in p.parents and p != dest}
    new_outside = {p for p in outside_after - outside_before if "imgq-store" not in str(p) and not p.relative_to(tmp_path).parts[0].startswith("imgq.db")}  # the database, its locks
    assert new_outside == set()
    day = dest / "2024" / "2024-01-02"
    folders = sorted(p.name for p in day.iterdir())
    assert all(f and not f.startswith(("-", ".")) and "$" not in f and " " not in f for f in folders), folders
    assert len(folders) == len(owners) + 1
    assert not list(tmp_path.rglob("PWNED*"))
    for (path,) in q(db_path, "SELECT path FROM copies"):
        assert (dest / path).resolve().is_relative_to(dest.resolve())


def test_a_symlink_planted_in_the_destination_is_never_written_through(tmp_path, run_imgq, db_path):
    root = tmp_path / "inbox"
    samples.make_photo(root / "alice" / "a.jpg", width=200, height=150, seed=1, taken=datetime(2024, 1, 2))
    os.utime(root / "alice" / "a.jpg", (1e9, 1e9))
    process(run_imgq, root)
    dest, elsewhere = tmp_path / "A", tmp_path / "elsewhere"
    dest.mkdir(), elsewhere.mkdir()
    (dest / "2024").symlink_to(elsewhere)
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 1 and "symlink" in r.stderr
    assert list(elsewhere.iterdir()) == []
    assert q(db_path, "SELECT state FROM files") == [("processed",)]


def test_archive_requires_a_destination_that_exists(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path, with_broken=False, photographers=("alice",), per_owner=1, with_rotated=False, with_loose=False, with_duplicate=False)
    process(run_imgq, inbox)
    assert run_imgq("archive").returncode == 2
    r = run_imgq("archive", "--to", tmp_path / "not-mounted")
    assert r.returncode == 1 and "must exist" in r.stderr
    assert not (tmp_path / "not-mounted").exists()
    (tmp_path / "imgq.toml").write_text('destinations = ["A"]\nbackoff_seconds = 0\n')
    (tmp_path / "A").mkdir()
    r = run_imgq("archive", "-", input="")  # an empty pipe means nothing, never everything
    assert r.returncode == 0 and r.stdout == "" and q(db_path, "SELECT count(*) FROM copies") == [(0,)]
    r = run_imgq("archive", "-", input="nope\n")
    assert r.returncode == 2 and "no file with id 'nope'" in r.stderr  # a usage error: nothing done
    [file_id] = [i for (i,) in q(db_path, "SELECT id FROM files")]
    r = run_imgq("archive", "--retry-now", "-", input=file_id + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [file_id]
    assert q(db_path, "SELECT DISTINCT destination FROM copies") == [(str(tmp_path / "A"),)]


# --- faults at the destination ----------------------------------------------------------------


def test_sigkill_during_a_copy_leaves_no_partial_file_and_the_next_run_completes(tmp_path, run_imgq, db_path):
    root = tmp_path / "inbox"
    big = root / "alice" / "big.jpg"
    samples.make_photo(big, width=320, height=240, seed=5, taken=datetime(2024, 2, 3))
    block = os.urandom(1 << 20)
    with open(big, "ab") as f:  # a photo with a long tail: decodes as usual, takes long to copy
        for _ in range(160):
            f.write(block)
    os.utime(big, (1e9, 1e9))
    [file_id] = process(run_imgq, root)
    dest = tmp_path / "A"
    dest.mkdir()
    final = dest / "2024" / "2024-02-03" / "alice" / "big.jpg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgq", "archive", "--to", str(dest)],
        cwd=tmp_path, env=imgq_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )

    def temps():
        return list(final.parent.glob(".big.jpg.*.imgq-tmp")) if final.parent.exists() else []

    try:
        deadline = time.monotonic() + 60
        while not temps():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-copy: look before killing
        assert temps() and not final.exists()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert not final.exists()  # nothing half-written under the final name
    assert q(db_path, "SELECT count(*) FROM copies") == [(0,)]
    assert q(db_path, "SELECT state FROM files") == [("processed",)]
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [file_id]
    assert sha(final) == sha(big)
    assert not list(dest.rglob("*.imgq-tmp*"))  # the killed copy's temporary file is gone


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/small (root only); unmounted after the test."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_destination_fails_only_its_own_copies_and_a_rerun_finishes(tmp_path, run_imgq, db_path, tiny_tmpfs):
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(1200, 900), with_broken=False, with_duplicate=False)
    (tmp_path / "imgq.toml").write_text("backoff_seconds = 600\n")
    ids = process(run_imgq, inbox)
    assert len(ids) == 8 and sum(p.stat().st_size for p in inbox["photos"]) > 2 * 2**20
    big = tmp_path / "big"
    big.mkdir()
    r = run_imgq("archive", "--to", big, "--to", tiny_tmpfs)
    assert r.returncode == 1
    assert "no space" in r.stderr and str(tiny_tmpfs) in r.stderr
    # the other destination got everything; the full one fails as transient, with backoff
    assert q(db_path, "SELECT count(DISTINCT file_id) FROM copies WHERE destination = ? AND artifact_id IS NULL", str(big)) == [(8,)]
    waiting = q(db_path, "SELECT error_kind, not_before > ?, error FROM archive_targets WHERE destination = ? AND error IS NOT NULL", time.time(), str(tiny_tmpfs))
    assert waiting and all(kind == "transient" and later and "no space" in err for kind, later, err in waiting)
    not_archived = [i for (i,) in q(db_path, "SELECT id FROM files WHERE state = 'processed'")]
    assert not_archived and set(r.stdout.split()) == set(ids) - set(not_archived)
    assert not list(tiny_tmpfs.rglob("*.imgq-tmp*"))
    status = json.loads(run_imgq("status", "--json").stdout)
    [small] = [d for d in status["archive"]["destinations"] if d["destination"] == str(tiny_tmpfs)]
    assert small["failing"] == len(waiting) and "no space" in small["last_error"]

    # collect needs a copy at both: originals that are not archived stay
    c = run_imgq("collect", "--to", big, "--to", tiny_tmpfs)
    assert c.returncode == 0, c.stderr
    paths = dict(q(db_path, "SELECT id, inbox || '/' || path FROM files"))
    for file_id in not_archived:
        assert Path(paths[file_id]).exists()
    status = json.loads(run_imgq("status", "--json").stdout)
    assert status["collect"]["wait"] == len(not_archived)

    # within the backoff, a plain rerun leaves them alone
    r = run_imgq("archive", "--to", big, "--to", tiny_tmpfs)
    assert r.returncode == 0 and r.stdout == "" and "backoff" in r.stderr

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_tmpfs)], check=True)
    r = run_imgq("archive", "--to", big, "--to", tiny_tmpfs, "--retry-now")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(not_archived)
    assert q(db_path, "SELECT count(*) FROM archive_targets WHERE error IS NOT NULL") == [(0,)]
    c = run_imgq("collect", "--to", big, "--to", tiny_tmpfs)
    assert c.returncode == 0, c.stderr
    assert sorted(c.stdout.split()) == sorted(not_archived)
    for file_id in ids:
        assert not Path(paths[file_id]).exists()
        assert q(db_path, "SELECT count(*) FROM copies WHERE file_id = ? AND artifact_id IS NULL", file_id) == [(2,)]


def test_a_full_ssh_destination_is_unavailable_and_keeps_no_partial_copy(tmp_path, tiny_tmpfs, ssh_hosts):
    """The bytes of a copy stream into a command on the host: a disk that fills up under it
    is the whole destination's trouble (no space, transient), not a garbled copy."""
    [host] = ssh_hosts(1)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    dest = open_destination(f"ssh://{host.alias}{tiny_tmpfs}", SshOptions(config=host.ssh_config))
    try:
        with pytest.raises(DestinationUnavailable, match="no space left for 2024/big.bin"):
            dest.put(src, "2024/big.bin", sha256=sha(src), size=src.stat().st_size)
        small = tmp_path / "small.bin"
        small.write_bytes(b"still room for this")
        dest.put(small, "2024/small.bin", sha256=sha(small), size=small.stat().st_size)  # the connection is fine
    finally:
        dest.close()
    assert sorted(p.name for p in (tiny_tmpfs / "2024").iterdir()) == ["small.bin"]  # no partial file, no temporary one


def test_verify_finds_and_repairs_corrupt_and_missing_copies(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path, with_broken=False, with_duplicate=False, with_loose=False, with_rotated=False)
    ids = process(run_imgq, inbox)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    assert run_imgq("archive", "--to", a, "--to", b).returncode == 0
    assert run_imgq("archive", "--verify").returncode == 0

    def copy_of(file_id, dest, role=None):
        sql = "SELECT c.path FROM copies c LEFT JOIN artifacts a ON a.id = c.artifact_id WHERE c.file_id = ? AND c.destination = ? AND "
        sql += "c.artifact_id IS NULL" if role is None else "a.name = ?"
        [(path,)] = q(db_path, sql, file_id, str(dest), *([role] if role else []))
        return Path(dest) / path

    corrupt_id, thumbless_id = ids[0], ids[1]
    corrupt = copy_of(corrupt_id, a)
    good = corrupt.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # bit rot: same size, different bytes
    corrupt.write_bytes(bytes(data))
    copy_of(thumbless_id, b, "thumb").unlink()

    # collect refuses the file with a bad copy (and says why), takes the others
    c = run_imgq("collect", "--to", a, "--to", b)
    assert c.returncode == 1 and "corrupt" in c.stderr
    assert corrupt_id not in c.stdout.split() and thumbless_id in c.stdout.split()
    assert q(db_path, "SELECT state FROM files WHERE id = ?", corrupt_id) == [("archived",)]
    [(verdict, reason)] = q(db_path, "SELECT verdict, reason FROM collect_checks WHERE file_id = ?", corrupt_id)
    assert verdict == "keep" and "corrupt" in reason
    assert (inbox.root / q(db_path, "SELECT path FROM files WHERE id = ?", corrupt_id)[0][0]).exists()

    v = run_imgq("archive", "--verify", "--json")
    assert v.returncode == 1  # something was wrong, even though it is repaired now
    found = [json.loads(line) for line in v.stdout.splitlines()]
    assert {(p["id"], p["repaired"]) for p in found} == {(corrupt_id, True), (thumbless_id, True)}
    assert any("corrupt" in p["problem"] for p in found) and any(p["problem"] == "missing" for p in found)
    assert corrupt.read_bytes() == good and copy_of(thumbless_id, b, "thumb").exists()

    c = run_imgq("collect", "--to", a, "--to", b)
    assert c.returncode == 0 and c.stdout.split() == [corrupt_id]
    assert run_imgq("archive", "--verify").returncode == 0

    # the original is gone from the inbox now: a bad copy is re-made from the other destination
    corrupt.write_bytes(b"\0" * len(good))
    v = run_imgq("archive", "--verify", "--json")
    [p] = [json.loads(line) for line in v.stdout.splitlines()]
    assert p["repaired"] and str(b) in p["detail"]
    assert corrupt.read_bytes() == good
    # both copies bad and no original: reported, never "repaired" from bad bytes
    corrupt.write_bytes(b"x")
    copy_of(corrupt_id, b).write_bytes(b"y")
    v = run_imgq("archive", "--verify", "--json")
    assert v.returncode == 1
    assert {json.loads(line)["repaired"] for line in v.stdout.splitlines()} == {False}
    assert corrupt.read_bytes() == b"x"
    status = json.loads(run_imgq("status", "--json").stdout)
    assert any(d["failing"] for d in status["archive"]["destinations"])


# --- archive targets: a checked retry machine with events, like jobs --------------------------


def test_an_archive_target_keeps_its_history_and_refuses_illegal_changes(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path, with_broken=False, photographers=("alice",), per_owner=1, with_rotated=False, with_loose=False, with_duplicate=False)
    [file_id] = process(run_imgq, inbox)
    (tmp_path / "imgq.toml").write_text("backoff_seconds = 0\n")
    dest = tmp_path / "A"
    assert run_imgq("archive", "--to", dest).returncode == 1  # not mounted yet
    assert run_imgq("archive", "--to", dest).returncode == 1  # still not
    dest.mkdir()
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 0 and r.stdout.split() == [file_id]
    db = DB(db_path)
    events = archive_targets.history(db, file_id, str(dest))
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "pending"), ("pending", "waiting"), ("waiting", "waiting"), ("waiting", "done")]
    assert "must exist" in json.loads(events[1]["detail"])["detail"] and {e["actor"] for e in events} == {"archive"}
    assert "pending -> waiting" in run_imgq("log", file_id).stdout  # in the file's history too

    # done -> done and done -> waiting are not on the diagram: refused, nothing written
    [target] = db.all("SELECT * FROM archive_targets")
    before = q(db_path, "SELECT count(*) FROM events"), q(db_path, "SELECT * FROM archive_targets")
    with pytest.raises(InvalidTransition):
        archive_targets.succeeded(db, target, now=time.time())
    with pytest.raises(InvalidTransition):
        archive_targets.failed(db, target, "x", "transient", attempts=1, not_before=0, now=time.time())
    with pytest.raises(InvalidTransition):
        archive_targets.check(None, "done")
    assert (q(db_path, "SELECT count(*) FROM events"), q(db_path, "SELECT * FROM archive_targets")) == before

    # a copy that goes missing and cannot be re-made: its record is withdrawn with an
    # event, and the target opens again and waits
    [(thumb, store_path)] = q(db_path, "SELECT c.path, a.path FROM copies c JOIN artifacts a ON a.id = c.artifact_id WHERE a.name = 'thumb'")
    (dest / thumb).unlink()
    (tmp_path / "imgq-store" / store_path).unlink()
    assert run_imgq("archive", "--verify").returncode == 1
    events = archive_targets.history(db, file_id, str(dest))
    assert [(e["from_state"], e["to_state"]) for e in events][-2:] == [("done", "pending"), ("pending", "waiting")]
    [(copy_detail, actor)] = q(db_path, "SELECT detail, actor FROM events WHERE entity = 'copy' AND from_state = 'recorded' AND to_state = 'unrecorded'")
    assert json.loads(copy_detail)["path"] == thumb and "missing" in json.loads(copy_detail)["reason"] and actor == "archive --verify"
    assert q(db_path, "SELECT count(*) FROM copies WHERE path = ?", thumb) == [(0,)]
    assert q(db_path, "SELECT state FROM files") == [("processed",)]
    db.close()


# --- ssh:// ----------------------------------------------------------------------------------


def test_both_host_sha256_programs_answer_what_hashlib_answers(tmp_path, ssh_hosts):
    """The scripts hash with OpenSSL where the host has one that hashes "abc" right, else
    with coreutils' sha256sum: both, through a real sshd, give the sha256 of the bytes."""
    from imgq import ssh as remote
    from imgq.destinations import ssh_scripts

    [host] = ssh_hosts(1)
    conn = remote.connect(host.alias, ssh_config=host.ssh_config)
    try:
        probe = remote.run(conn, ["sh", "-c", ssh_scripts.H256_PROBE]).stdout.decode()
        assert "openssl" in ssh_scripts.h256_function(probe)  # this machine has a working OpenSSL
        assert "sha256sum" in ssh_scripts.h256_function("") and "sha256sum" in ssh_scripts.h256_function("0" * 64 + " *stdin")
        (tmp_path / "d").mkdir()
        files = {"d/empty": b"", "d/big": os.urandom(3_000_001), "d/x y $(z)": b"abc"}
        for rel, data in files.items():
            (tmp_path / rel).write_bytes(data)
        for h256 in (ssh_scripts.h256_function(probe), ssh_scripts.h256_function(None)):
            r = remote.run(conn, ["sh", "-c", h256 + ssh_scripts._CHECK_SCRIPT, "sh", str(tmp_path), *files, "d/none"])
            assert r.stdout.decode().splitlines() == [f"{len(d)} {hashlib.sha256(d).hexdigest()}" for d in files.values()] + ["-"], h256
    finally:
        remote.close(conn)


def test_ssh_destination_through_a_real_sshd(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    config = host.ssh_config
    remote_root = tmp_path / "remote"  # the sshd runs on this machine: we can look at what lands
    remote_root.mkdir()
    url = f"ssh://{host.alias}{remote_root}"
    root = tmp_path / "inbox"
    samples.make_photo(root / "alice" / "IMG_1.jpg", width=320, height=240, seed=1, taken=datetime(2024, 3, 4))
    samples.make_photo(root / "Zoë O'Brien & co" / "$(touch PWNED) 'x' `id`.jpg", width=320, height=240, seed=2, taken=datetime(2024, 3, 4))
    for p in root.rglob("*.jpg"):
        os.utime(p, (1e9, 1e9))
    ids = process(run_imgq, root)
    local = tmp_path / "A"
    local.mkdir()

    # the host is down: the local destination proceeds, the ssh one fails as transient
    host.kill()
    r = run_imgq("archive", "--to", local, "--to", url, "--ssh-config", config, timeout=60)
    assert r.returncode == 1 and "unavailable" in r.stderr and r.stdout == ""
    assert q(db_path, "SELECT count(*) FROM copies WHERE destination = ?", str(local)) == [(6,)]
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"processed"}
    host.restart()

    r = run_imgq("archive", "--to", local, "--to", url, "--ssh-config", config, "--retry-now")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids)
    for (path, digest) in q(db_path, "SELECT path, sha256 FROM copies WHERE destination = ?", url):
        assert sha(remote_root / path) == digest
    hostile = sorted(p.name for p in remote_root.rglob("*PWNED*"))
    assert hostile == ["$(touch PWNED) 'x' `id`.jpg", "$(touch PWNED) 'x' `id`.thumb.jpg", "$(touch PWNED) 'x' `id`.web.jpg"]
    assert not list(tmp_path.rglob("PWNED")) and not list(Path.home().glob("PWNED*"))
    assert not list(remote_root.rglob("*.imgq-tmp*"))

    # verify over ssh finds a corrupt remote copy and repairs it
    [(path,)] = q(db_path, "SELECT path FROM copies WHERE destination = ? AND path LIKE '%alice/IMG_1.jpg'", url)
    good = (remote_root / path).read_bytes()
    (remote_root / path).write_bytes(good[:-10])
    v = run_imgq("archive", "--verify", "--to", url, "--ssh-config", config)
    assert v.returncode == 1 and "repaired" in v.stderr
    assert (remote_root / path).read_bytes() == good

    # an unknown host key is refused unless asked for
    (tmp_path / "empty_known_hosts").write_text("")
    strict = tmp_path / "strict_config"
    strict.write_text(config.read_text().replace(str(host.fleet.known_hosts), str(tmp_path / "empty_known_hosts")))
    v = run_imgq("archive", "--verify", "--to", url, "--ssh-config", strict)
    assert v.returncode == 1 and "unknown" in v.stderr

    c = run_imgq("collect", "--to", local, "--to", url, "--ssh-config", config)
    assert c.returncode == 0, c.stderr
    assert sorted(c.stdout.split()) == sorted(ids)
    assert not list(root.rglob("*.jpg")) and (root / "alice").is_dir()


def test_on_archived_runs_once_per_copy_and_a_failing_command_is_retried_without_holding_up_collect(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path, per_owner=1)
    ids = process(run_imgq, inbox)
    dest = tmp_path / "A"
    dest.mkdir()
    calls, ok = tmp_path / "calls", tmp_path / "catalogue-up"
    script = tmp_path / "catalogue"
    # a catalogue that is down until catalogue-up exists; it records its arguments, one call a line
    script.write_text(f'#!/bin/sh\n[ -e "{ok}" ] || {{ echo "catalogue is down" >&2; exit 3; }}\nprintf "%s|" "$@" >> "{calls}"\necho >> "{calls}"\n')
    script.chmod(0o755)
    (tmp_path / "imgq.toml").write_text(f'on_archived = ["{script}", "--add"]\nbackoff_seconds = 0.05\nbackoff_max_seconds = 0.1\n')

    first = run_imgq("archive", "--to", dest)
    assert first.returncode == 0, first.stderr  # the copies are made and stand
    assert sorted(first.stdout.split()) == sorted(ids)
    assert "catalogue is down" in first.stderr and not calls.exists()
    hooks = q(db_path, "SELECT file_id, state, attempts, error FROM archive_hooks ORDER BY attempts DESC")
    assert sorted(h[0] for h in hooks) == sorted(ids) and {h[1] for h in hooks} == {"pending"}
    # the first failure is recorded; the others wait for the next archive rather than each costing a try (or a timeout)
    assert hooks[0][2:] == (1, f"on_archived {script} exited 3: catalogue is down")
    assert {h[2:] for h in hooks[1:]} == {(0, None)} and len(hooks) > 1
    # a pending hook never holds up collect: the originals go once their copies re-verify
    collect = run_imgq("collect", "--to", dest)
    assert collect.returncode == 0, collect.stderr
    assert {s for (s,) in q(db_path, "SELECT DISTINCT state FROM files WHERE id IN (SELECT file_id FROM archive_hooks)")} == {"collected"}

    ok.touch()
    time.sleep(0.2)  # the backoff is over
    second = run_imgq("archive", "--to", dest)
    assert second.returncode == 0, second.stderr
    got = sorted(line.split("|")[:4] for line in calls.read_text().splitlines())
    copies = q(db_path, "SELECT file_id, destination, path FROM copies WHERE artifact_id IS NULL ORDER BY file_id")
    assert got == [["--add", f, d, p] for f, d, p in copies]
    for f, d, p in copies:  # the path given is where the original's bytes are
        assert sha(Path(d) / p) == q(db_path, "SELECT sha256 FROM files WHERE id = ?", f)[0][0]
    assert {(s, e) for s, e in q(db_path, "SELECT state, error FROM archive_hooks")} == {("done", None)}
    assert "pending -> done" in run_imgq("log", ids[0]).stdout
    run_imgq("archive", "--to", dest)
    assert len(calls.read_text().splitlines()) == len(ids)  # once per copy, never again
