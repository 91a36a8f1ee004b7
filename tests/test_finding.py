"""Finding things again: where photos were archived (collect without --to), how many
copies are enough (--min-copies with a destination down), which photo a name means
(imgq log by path, name or job), and which run a report is about (the latest, be it
`imgq work` or `imgq run`)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from imgq import samples


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def small_inbox(root: Path, **kw) -> samples.InboxSample:
    kw = {"photographers": ("alice", "bob"), "per_owner": 2, "size": (320, 240), "with_broken": False, "with_rotated": False, "with_loose": False, **kw}
    return samples.make_inbox(root, **kw)


@pytest.fixture
def processed(tmp_path, run_imgq, db_path):
    """alice and bob with 2 photos each and a duplicate, scanned and processed; returns
    (inbox sample, {inbox path: file id})."""
    inbox = small_inbox(tmp_path / "inbox")
    scan = run_imgq("scan", inbox)
    assert run_imgq("enqueue", "-", input=scan.stdout).returncode == 0
    assert run_imgq("work", "-j2", "--drain").returncode == 0
    ids = {inbox.root / p: i for i, p in q(db_path, "SELECT id, path FROM files")}
    return inbox, ids


@pytest.fixture
def removable(tmp_path):
    """A destination on a disk that can be pulled: ``photos`` on a tmpfs of its own
    (root), or a plain folder where mounting is not allowed. Returns (path, unplug):
    after ``unplug()`` the destination folder is not there, as when the disk is gone."""
    mnt = tmp_path / "usb"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    dest = mnt / "photos"
    dest.mkdir()

    def unplug():
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)
        else:
            dest.rename(tmp_path / "usb-elsewhere")
        assert not dest.exists()

    yield dest, unplug
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- collect without --to


def test_collect_without_to_requires_every_destination_the_database_copied_to(processed, run_imgq, db_path, tmp_path):
    inbox, ids = processed
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    assert run_imgq("archive", "--to", a, "--to", b).returncode == 0
    alice1 = ids[inbox.root / "alice" / "IMG_0001.jpg"]
    [(rel,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND destination = ? AND artifact_id IS NULL", alice1, str(b))
    (b / rel).unlink()  # B lost its copy: B is required, so alice's photo must stay

    r = run_imgq("collect", "--dry-run")
    assert r.returncode == 1, r.stderr  # kept because a copy is missing: something is wrong
    assert str(a) in r.stderr and str(b) in r.stderr and "recorded in the database" in r.stderr
    kept = {alice1, ids[inbox["duplicate"]["copy"]]}  # the duplicate shares alice's copies
    assert set(r.stdout.split()) == set(ids.values()) - kept
    assert all(p.exists() for p in ids)

    r = run_imgq("collect")
    assert r.returncode == 1
    assert set(r.stdout.split()) == set(ids.values()) - kept
    assert {p for p in ids if p.exists()} == {inbox.root / "alice" / "IMG_0001.jpg", inbox["duplicate"]["copy"]}
    assert "is missing" in r.stderr and str(b) in r.stderr

    # repaired, it goes too
    assert "repaired" in run_imgq("archive", "--verify", "--to", a, "--to", b).stderr
    r = run_imgq("collect")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == kept
    assert not any(p.exists() for p in ids)


def test_collect_without_to_and_no_copies_anywhere_is_a_usage_error(processed, run_imgq):
    r = run_imgq("collect")
    assert r.returncode == 2
    assert "--to" in r.stderr and "no destination" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_destination_given_in_imgq_toml_is_still_what_collect_requires(processed, run_imgq, tmp_path):
    inbox, ids = processed
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    assert run_imgq("archive", "--to", a).returncode == 0
    (tmp_path / "imgq.toml").write_text(f'destinations = ["{a}", "{b}"]\n')
    r = run_imgq("collect")  # B (from imgq.toml) holds nothing: everything waits
    assert r.returncode == 0 and r.stdout == ""
    assert "recorded in the database" not in r.stderr
    assert all(p.exists() for p in ids)


# --------------------------------------------------------------------------- --min-copies, a disk down


def test_min_copies_one_frees_the_inbox_while_the_other_destination_is_down(processed, run_imgq, db_path, tmp_path, removable):
    inbox, ids = processed
    a = tmp_path / "A"
    a.mkdir()
    usb, unplug = removable
    unplug()
    r = run_imgq("archive", "--to", a, "--to", usb)
    assert r.returncode == 1 and str(usb) in r.stderr
    assert {s for (s,) in q(db_path, "SELECT state FROM files WHERE state != 'duplicate'")} == {"processed"}

    # by default every destination must hold a copy: nothing goes
    r = run_imgq("collect", "--to", a, "--to", usb)
    assert r.returncode == 0 and r.stdout == ""
    # two copies are asked for and only one exists: nothing goes either
    r = run_imgq("collect", "--to", a, "--to", usb, "--min-copies", "2")
    assert r.stdout == "" and all(p.exists() for p in ids)

    r = run_imgq("collect", "--to", a, "--to", usb, "--min-copies", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids.values())
    assert not any(p.exists() for p in ids)
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"collected"}
    moves = q(db_path, "SELECT from_state, detail FROM events WHERE entity = 'file' AND to_state = 'collected'")
    assert {f for f, _ in moves} == {"processed", "duplicate"}
    assert all("1 verified copy" in d and str(a) in d for _, d in moves)
    log = run_imgq("log", ids[inbox.root / "bob" / "IMG_0002.jpg"]).stdout
    assert "processed -> collected" in log and "--min-copies 1" in log
    # the copies that made it so are there, the size recorded
    for path, i in ids.items():
        if path != inbox["duplicate"]["copy"]:
            [(rel, size)] = q(db_path, "SELECT path, bytes FROM copies WHERE file_id = ? AND artifact_id IS NULL", i)
            assert (a / rel).stat().st_size == size


def test_min_copies_counts_any_destination_holding_copies_without_to(processed, run_imgq, db_path, tmp_path, removable):
    inbox, ids = processed
    a = tmp_path / "A"
    a.mkdir()
    usb, unplug = removable
    unplug()
    assert run_imgq("archive", "--to", a, "--to", usb).returncode == 1
    r = run_imgq("collect", "--min-copies", "1", "--json")
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert {v["action"] for v in verdicts} == {"deleted"}
    assert all(v["verified"] == [str(a)] for v in verdicts)
    assert not any(p.exists() for p in ids)


def test_run_with_min_copies_one_keeps_emptying_the_inbox_when_a_disk_is_pulled(tmp_path, run_imgq, db_path, removable):
    a = tmp_path / "A"
    a.mkdir()
    usb, unplug = removable
    inbox = small_inbox(tmp_path / "inbox", photographers=("alice",), with_duplicate=False)
    r = run_imgq("run", inbox, "--to", a, "--to", usb, "--min-copies", "1")
    assert r.returncode == 0, r.stderr
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"collected"}

    unplug()
    later = small_inbox(tmp_path / "later", photographers=("carol",), with_duplicate=False, seed=7)
    os.rename(later.root / "carol", inbox.root / "carol")
    new = sorted((inbox.root / "carol").rglob("*.jpg"))
    assert new
    r = run_imgq("run", inbox, "--to", a, "--to", usb, "--min-copies", "1")
    assert r.returncode == 1 and str(usb) in r.stderr  # the pulled disk is an error worth a mail
    assert not any(p.exists() for p in new)
    carol = q(db_path, "SELECT state FROM files WHERE owner = 'carol'")
    assert carol and {s for (s,) in carol} == {"collected"}


def test_min_copies_help_says_what_it_means(run_imgq):
    text = " ".join(run_imgq("collect", "--help").stdout.split())
    assert "even if" in text and "not archived" in text


# --------------------------------------------------------------------------- imgq log: which photo


def test_log_finds_a_photo_by_path_name_or_job(processed, run_imgq, db_path, tmp_path):
    inbox, ids = processed
    bob2 = inbox.root / "bob" / "IMG_0002.jpg"
    by_id = run_imgq("log", ids[bob2])
    assert by_id.returncode == 0 and "new -> seen" in by_id.stdout
    for ref in (str(bob2), "inbox/bob/IMG_0002.jpg", "bob/IMG_0002.jpg", "./inbox/bob/../bob/IMG_0002.jpg"):
        r = run_imgq("log", ref)
        assert r.returncode == 0, (ref, r.stderr)
        assert r.stdout == by_id.stdout, ref
    # a name only one photo has
    dup = inbox["duplicate"]["copy"]
    r = run_imgq("log", dup.name)
    assert r.returncode == 0 and r.stdout == run_imgq("log", ids[dup]).stdout
    # a job number
    [(job,)] = q(db_path, "SELECT min(id) FROM jobs WHERE file_id = ?", ids[bob2])
    for ref in (str(job), f"job:{job}", f"#{job}"):
        r = run_imgq("log", ref)
        assert r.returncode == 0, (ref, r.stderr)
        assert r.stdout == by_id.stdout, ref
    # --json too
    r = run_imgq("log", "--json", "bob/IMG_0002.jpg")
    assert r.returncode == 0 and {json.loads(line)["file_id"] for line in r.stdout.splitlines()} == {ids[bob2]}


def test_log_lists_the_candidates_when_a_name_is_ambiguous(processed, run_imgq):
    inbox, ids = processed
    r = run_imgq("log", "IMG_0001.jpg")  # alice's and bob's
    assert r.returncode == 2 and r.stdout == ""
    both = {ids[inbox.root / "alice" / "IMG_0001.jpg"], ids[inbox.root / "bob" / "IMG_0001.jpg"]}
    for i in both:
        assert i in r.stderr
    assert str(inbox.root / "alice" / "IMG_0001.jpg") in r.stderr
    assert "Traceback" not in r.stderr


def test_log_suggests_close_ids_when_nothing_matches(processed, run_imgq):
    inbox, ids = processed
    target = ids[inbox.root / "bob" / "IMG_0002.jpg"]
    typo = target.replace("bob", "bo", 1)
    r = run_imgq("log", typo)
    assert r.returncode == 2 and r.stdout == ""
    assert "no file" in r.stderr and target in r.stderr and "did you mean" in r.stderr.lower()
    r = run_imgq("log", "zzzzzzzz-nothing-like-it")
    assert r.returncode == 2 and "no file" in r.stderr and "did you mean" not in r.stderr.lower()
    r = run_imgq("log", "99999")
    assert r.returncode == 2 and "99999" in r.stderr


def test_log_finds_a_collected_photo_by_the_path_it_had(processed, run_imgq, tmp_path):
    inbox, ids = processed
    a = tmp_path / "A"
    a.mkdir()
    assert run_imgq("archive", "--to", a).returncode == 0
    assert run_imgq("collect", "--to", a).returncode == 0
    gone = next(p for p in ids if p.name == "IMG_0002.jpg" and "alice" in p.parts)
    assert not gone.exists()
    r = run_imgq("log", gone)
    assert r.returncode == 0, r.stderr
    assert "-> collected" in r.stdout


# --------------------------------------------------------------------------- imgq report: the latest run


def test_report_shows_the_latest_run_be_it_work_or_run(tmp_path, run_imgq, db_path):
    inbox = small_inbox(tmp_path / "inbox", photographers=("alice",), with_duplicate=False)
    assert run_imgq("scan", inbox).returncode == 0
    assert run_imgq("enqueue").returncode == 0
    assert run_imgq("work", "--drain").returncode == 0
    [(work_id,)] = q(db_path, "SELECT id FROM runs WHERE command = 'work'")

    # cron's `imgq run` brings two new photos
    later = small_inbox(tmp_path / "later", photographers=("bob",), with_duplicate=False, seed=3)
    os.rename(later.root / "bob", inbox.root / "bob")
    a = tmp_path / "A"
    a.mkdir()
    assert run_imgq("run", inbox, "--to", a).returncode == 0
    [(run_id,)] = q(db_path, "SELECT id FROM runs WHERE command = 'run'")

    rep = json.loads(run_imgq("report", "--json").stdout)
    assert rep["scope"] == {"run": run_id, "command": "run"}
    assert rep["photos"]["processed"] == 2  # bob's two, processed by the run's work part
    assert rep["jobs"]["done"] == q(db_path, "SELECT count(*) FROM jobs j JOIN files f ON f.id = j.file_id WHERE f.owner = 'bob'")[0][0]
    text = run_imgq("report").stdout
    assert text.startswith(f"imgq report: run {run_id} (run)") and "2 processed" in text

    # either kind can still be asked for
    assert json.loads(run_imgq("report", "--last", "work", "--json").stdout)["scope"] == {"run": work_id, "command": "work"}
    assert json.loads(run_imgq("report", "--run", str(work_id), "--json").stdout)["scope"]["run"] == work_id
    assert json.loads(run_imgq("report", "--last", "scan", "--json").stdout)["scope"]["command"] == "scan"
    r = run_imgq("report", "--last", "publish")
    assert r.returncode == 2 and "publish" in r.stderr
    assert run_imgq("report", "--last", "work", "--run", str(work_id)).returncode == 2

    # a later `imgq work` is the latest again
    assert run_imgq("work", "--drain").returncode == 0
    assert json.loads(run_imgq("report", "--json").stdout)["scope"]["command"] == "work"
