"""--dry-run (-n) on every step that changes something: it changes nothing (no database
made or written, no lock folder, no file written or deleted in the inbox, the store, a
destination or a gallery), and what it prints is what the real run then does.

Each test runs the real CLI on a real inbox and database: a snapshot of every path under
the test's folder (kind, size, mtime, sha256; folders with their entries) is taken before
and after the dry run, then the real run is made and its output compared with the dry run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import imgq_subprocess
from sshhosts import ssh_hosts  # noqa: F401
from imgq import samples

DRY_DONE = re.compile(r"imgq: \w+: dry run: nothing changed")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root``: (kind, size, mtime_ns, sha256) of files, (kind, mtime_ns,
    entries) of folders, so a file made and removed again still shows in a folder's mtime."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        st = os.lstat(folder)
        out[os.path.relpath(folder, root)] = ("dir", st.st_mtime_ns, tuple(sorted(dirs + files)))
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) and not os.path.islink(path) else None
            out[os.path.relpath(path, root)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def dry(tmp_path, *args, input=None, code=0):
    """Run ``imgq ARGS --dry-run`` and check it changed nothing under ``tmp_path``."""
    before = snapshot(tmp_path)
    r = imgq_subprocess(*args, "--dry-run", cwd=tmp_path, input=input)
    assert r.returncode == code, r.stderr
    assert DRY_DONE.search(r.stderr), r.stderr
    after = snapshot(tmp_path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, changed
    return r


def real(tmp_path, *args, input=None, code=0):
    r = imgq_subprocess(*args, cwd=tmp_path, input=input)
    assert r.returncode == code, r.stderr
    return r


def would(stderr: str, verb: str) -> set[str]:
    """The paths named by the dry run's 'would VERB PATH' lines."""
    return {m.group(1) for m in re.finditer(rf"would {verb}(?: to)? (/.*?)(?:: |$)", stderr, re.M)}


@pytest.fixture
def good_inbox(tmp_path):
    """The sample inbox without its truncated photo: every photo goes all the way."""
    samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(320, 240), with_broken=False)
    return tmp_path / "inbox"


def test_scan_dry_run_makes_no_database_and_prints_what_the_scan_records(tmp_path, good_inbox):
    for args in ([], ["--json"]):
        r = dry(tmp_path, "scan", *args, good_inbox)
        assert not (tmp_path / "imgq.db").exists() and not (tmp_path / "imgq.db.locks").exists()
        assert r.stdout.strip()
    shown = dry(tmp_path, "scan", "--json", good_inbox).stdout
    plain = dry(tmp_path, "scan", good_inbox).stdout
    assert real(tmp_path, "scan", "--json", good_inbox).stdout == shown  # same photos, same ids, same states
    # and on a database that knows them: a new photo only
    samples.make_photo(good_inbox / "dave" / "IMG_0100.jpg", width=320, height=240, seed=99)
    os.utime(good_inbox / "dave" / "IMG_0100.jpg", (0, 0))
    r = dry(tmp_path, "scan", "-n", good_inbox, "--settle", "0")
    assert r.stdout.startswith("dave_") and len(r.stdout.split()) == 1, r.stdout
    assert real(tmp_path, "scan", good_inbox, "--settle", "0").stdout == r.stdout
    assert len(plain.split()) >= 6


def test_enqueue_dry_run_lists_the_files_a_real_enqueue_gives_jobs(tmp_path, good_inbox):
    real(tmp_path, "scan", good_inbox)
    r = dry(tmp_path, "enqueue", "--json")
    assert r.stdout.count("\n") >= 6
    assert real(tmp_path, "enqueue", "--json").stdout == r.stdout
    assert dry(tmp_path, "enqueue").stdout == ""  # nothing left to do, said as a real run says it


def test_archive_dry_run_names_every_copy_a_real_archive_makes(tmp_path, good_inbox):
    real(tmp_path, "scan", good_inbox)
    real(tmp_path, "enqueue")
    real(tmp_path, "work", "--drain", "-j", "1")
    dest = tmp_path / "backup"
    dest.mkdir()
    r = dry(tmp_path, "archive", "--to", dest)
    copies = would(r.stderr, "copy")
    done = real(tmp_path, "archive", "--to", dest)
    assert sorted(done.stdout.split()) == sorted(r.stdout.split()) and len(r.stdout.split()) >= 6
    assert copies == {str(dest / p) for p in files_under(dest)}, r.stderr  # every copy made, named beforehand
    assert len(copies) == 3 * len(r.stdout.split())  # original, thumb, web
    assert dry(tmp_path, "archive", "--to", dest).stdout == ""  # all done: nothing would be
    # --verify reads every copy and repairs none; a real --verify then repairs that one
    victim = next(dest.rglob("*.thumb.jpg"))
    victim.write_bytes(b"not the thumbnail")
    r = dry(tmp_path, "archive", "--verify", code=1)
    assert victim.read_bytes() == b"not the thumbnail"
    assert real(tmp_path, "archive", "--verify", code=1).stdout == r.stdout and r.stdout.strip()
    assert victim.read_bytes() != b"not the thumbnail"


def test_publish_dry_run_creates_no_gallery_and_names_what_publish_writes(tmp_path, good_inbox):
    real(tmp_path, "scan", good_inbox)
    real(tmp_path, "enqueue")
    real(tmp_path, "work", "--drain", "-j", "1")
    site = tmp_path / "site"
    r = dry(tmp_path, "publish", site)
    assert not site.exists()
    done = real(tmp_path, "publish", site)
    assert done.stdout == r.stdout and len(r.stdout.split()) >= 6
    assert would(r.stderr, "write") == {str(site / p) for p in files_under(site) if p != ".imgq-gallery.json"}
    # a photo gone from the database's view: its files would be removed, as the real run does
    con = sqlite3.connect(tmp_path / "imgq.db")
    with con:
        con.execute("UPDATE files SET state = 'failed' WHERE id = ?", (r.stdout.split()[0],))
    con.close()
    before = files_under(site)
    r = dry(tmp_path, "publish", site)
    removed = would(r.stderr, "remove")
    real(tmp_path, "publish", site)
    assert removed and removed == {str(site / p) for p in before - files_under(site)}


def test_run_dry_run_on_a_new_inbox_lists_what_the_run_archives(tmp_path, good_inbox):
    dest = tmp_path / "backup"
    dest.mkdir()
    inbox_files = files_under(good_inbox)
    r = dry(tmp_path, "run", good_inbox, "--to", dest)
    assert not (tmp_path / "imgq.db").exists()
    steps = [json.loads(line) for line in dry(tmp_path, "run", "--json", good_inbox, "--to", dest).stdout.splitlines()]
    assert [o["step"] for o in steps] == ["scan", "enqueue", "work", "archive", "collect"]  # one object per step, as a real run
    assert steps[2]["would_process"] == len(r.stdout.split())
    done = real(tmp_path, "run", good_inbox, "--to", dest)
    assert sorted(done.stdout.split()) == sorted(r.stdout.split()) and len(r.stdout.split()) >= 6
    assert files_under(good_inbox) != inbox_files  # the real run did collect


def test_run_dry_run_names_the_copies_and_deletions_of_processed_photos(tmp_path, good_inbox):
    real(tmp_path, "scan", good_inbox)
    real(tmp_path, "enqueue")
    real(tmp_path, "work", "--drain", "-j", "1")
    dest = tmp_path / "backup"
    dest.mkdir()
    inbox_files = files_under(good_inbox)
    r = dry(tmp_path, "run", good_inbox, "--to", dest)
    done = real(tmp_path, "run", good_inbox, "--to", dest)
    assert sorted(done.stdout.split()) == sorted(r.stdout.split()) and r.stdout.strip()
    copies = {str(dest / p) for p in files_under(dest) if not str(p).startswith("imgq-journal/")}  # not the journal's snapshot
    assert would(r.stderr, "copy") == copies
    deleted = {str(good_inbox / p) for p in inbox_files - files_under(good_inbox)}
    assert deleted and would(r.stderr, "delete") == deleted, r.stderr


def test_collect_dry_run_writes_no_row_and_lists_what_collect_deletes(tmp_path, good_inbox):
    dest = tmp_path / "backup"
    dest.mkdir()
    real(tmp_path, "run", good_inbox, "--to", dest, "--no-collect")
    r = dry(tmp_path, "collect", "--to", dest)  # the database's bytes too: no run recorded
    done = real(tmp_path, "collect", "--to", dest)
    assert done.stdout == r.stdout and len(r.stdout.split()) >= 6


@pytest.mark.parametrize("command", [["collect", "--min-copies", "1"], ["publish", "site"]], ids=lambda c: c[0])
def test_a_dry_run_of_a_reading_command_refuses_a_missing_database_and_makes_none(tmp_path, command):
    r = imgq_subprocess(*command, "--dry-run", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "no database at" in r.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_archive_dry_run_to_ssh_connects_to_nothing_and_names_the_copies_made_there(tmp_path, good_inbox, ssh_hosts):
    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"  # the sshd runs on this machine: what lands there can be seen
    remote.mkdir()
    url = f"ssh://{host.alias}{remote}"
    real(tmp_path, "scan", good_inbox)
    real(tmp_path, "enqueue")
    real(tmp_path, "work", "--drain", "-j", "1")
    host.kill()  # a dry run that tried to connect would say the destination is down
    r = dry(tmp_path, "archive", "--to", url, "--ssh-config", host.ssh_config)
    assert "unavailable" not in r.stderr and r.stdout.strip(), r.stderr
    assert os.listdir(remote) == []  # not even the marker that tells destinations apart
    host.restart()
    done = real(tmp_path, "archive", "--to", url, "--ssh-config", host.ssh_config)
    assert sorted(done.stdout.split()) == sorted(r.stdout.split())
    made = {f"{url}/{p}" for p in files_under(remote) if not p.startswith(".imgq")}
    assert {m.group(1) for m in re.finditer(r"would copy to (ssh://.*)$", r.stderr, re.M)} == made


@pytest.mark.parametrize("db", ["no-such-folder/imgq.db", ".", "notes.txt"], ids=["missing-folder", "a-folder", "not-sqlite"])
def test_a_dry_run_refuses_a_bad_database_as_the_real_run_does(tmp_path, good_inbox, db):
    (tmp_path / "notes.txt").write_text("not a database\n")
    before = snapshot(tmp_path)
    r = imgq_subprocess("scan", "--dry-run", "--db", db, good_inbox, cwd=tmp_path)
    assert snapshot(tmp_path) == before
    real_run = imgq_subprocess("scan", "--db", db, good_inbox, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, real_run.stderr) and r.stderr.startswith("imgq: error: "), r.stderr
