"""imgq run: the whole pipeline once, from cron; twice changes nothing."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path

from imgq import samples
from imgq.ledger.database import DB, lock_path


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_run_twice_archives_collects_and_then_changes_nothing(tmp_path, inbox, run_imgq, db_path):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    first = run_imgq("run", inbox, "--to", a, "--to", b, "-j2")
    assert first.returncode == 1  # the truncated JPEG failed; everything else went through
    assert "truncated" in first.stderr
    states = dict(q(db_path, "SELECT path, state FROM files"))
    [broken] = [p for p in states if "truncated" in p]
    assert states.pop(broken) == "failed"
    assert set(states.values()) == {"collected"}, states
    archived = first.stdout.split()
    assert len(archived) == len(states) - 1  # the duplicate is collected, never archived
    # what is left in the inbox: the failed file and the photographers' folders
    left = [p for p in Path(inbox).rglob("*") if p.is_file()]
    assert left == [Path(inbox) / broken]
    assert {p.name for p in Path(inbox).iterdir()} == {"alice", "bob", "carol"}
    for dest in (a, b):
        originals = q(db_path, "SELECT count(*) FROM copies WHERE destination = ? AND artifact_id IS NULL", str(dest))[0][0]
        assert originals == len(archived)
    [counts] = [json.loads(c) for (c,) in q(db_path, "SELECT counts FROM runs WHERE command = 'run'")]
    assert counts["archive"]["archived"] == len(archived) and counts["collect"]["deleted"] == len(states)

    snapshot = tree(Path(inbox)), tree(a), tree(b), q(db_path, "SELECT count(*) FROM events"), q(db_path, "SELECT * FROM copies")
    second = run_imgq("run", inbox, "--to", a, "--to", b, "-j2")
    assert second.returncode == 0, second.stderr
    assert second.stdout == "" and second.stderr == ""
    assert (tree(Path(inbox)), tree(a), tree(b), q(db_path, "SELECT count(*) FROM events")) == snapshot[:4]
    # copies were read again by collect? no: nothing was left to collect, nothing was touched
    assert q(db_path, "SELECT * FROM copies") == snapshot[4]


def test_run_from_a_config_file_with_json_steps(tmp_path, run_imgq, db_path):
    root = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=2, size=(320, 240), with_broken=False, with_duplicate=False, with_rotated=False, with_loose=False)
    conf = tmp_path / "etc" / "imgq.toml"
    conf.parent.mkdir()
    conf.write_text('destinations = ["../archive"]\n')
    (tmp_path / "archive").mkdir()
    r = run_imgq("run", "--config", conf, "--json", root, "-j1")
    assert r.returncode == 0, r.stderr
    steps = [json.loads(line) for line in r.stdout.splitlines()]
    assert [s["step"] for s in steps] == ["scan", "enqueue", "work", "archive", "collect"]
    assert steps[0]["new"] == 2 and steps[3]["archived"] == 2 and steps[4]["deleted"] == 2
    assert len(list((tmp_path / "archive").rglob("IMG_000?.jpg"))) == 2


def test_run_keeps_originals_when_a_destination_is_missing(tmp_path, run_imgq, db_path):
    root = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=1, size=(320, 240), with_broken=False, with_duplicate=False, with_rotated=False, with_loose=False)
    (tmp_path / "A").mkdir()
    r = run_imgq("run", root, "--to", tmp_path / "A", "--to", tmp_path / "unplugged-usb")
    assert r.returncode == 1 and "unplugged-usb" in r.stderr
    assert (Path(root) / "alice" / "IMG_0001.jpg").exists()
    assert q(db_path, "SELECT state FROM files") == [("processed",)]


def test_overlapping_runs_and_usage(tmp_path, inbox, run_imgq, db_path):
    (tmp_path / "A").mkdir()
    assert run_imgq("run", inbox).returncode == 2  # no destination anywhere
    assert run_imgq("run", "--to", tmp_path / "A").returncode == 2  # no inbox
    r = run_imgq("run", tmp_path / "unmounted", "--to", tmp_path / "A")
    assert r.returncode == 2 and "unmounted" in r.stderr
    DB(db_path).close()  # the database, as a first run makes it
    fd = os.open(lock_path(db_path, "run"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run_imgq("run", inbox, "--to", tmp_path / "A")
        assert r.returncode == 0 and r.stdout == "" and "another" in r.stderr
        assert q(db_path, "SELECT count(*) FROM files") == [(0,)]
    finally:
        os.close(fd)


def test_run_checks_the_agent_options_as_work_does(tmp_path, inbox, run_imgq, db_path):
    (tmp_path / "A").mkdir()
    for args, words in ((["--sbatch"], "--sbatch goes with --slurm N"), (["--slurm-arg=--qos=high"], "--slurm-arg goes with --slurm N"),
                        (["--advertise", "coord"], "--advertise and --agent-file go with --listen or --slurm"),
                        (["--listen", "127.0.0.1", "--agent-file", tmp_path / "no" / "run.env"], "does not exist")):
        r = run_imgq("run", inbox, "--to", tmp_path / "A", *args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
    assert not db_path.exists() or q(db_path, "SELECT count(*) FROM files") == [(0,)]  # refused before anything ran


def test_run_after_a_recipe_is_edited_makes_the_new_outputs(tmp_path, run_imgq, db_path):
    """`imgq run` enqueues by the same rule as `imgq enqueue`: a recipe edited in imgq.toml
    between two runs gives the files it affects new jobs, and the second run makes,
    archives and reports their new outputs."""
    root = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=2, size=(320, 240), with_broken=False, with_duplicate=False, with_rotated=False, with_loose=False)
    conf = tmp_path / "imgq.toml"
    recipe = 'enqueue = ["default", "soft"]\n[recipes.soft]\nsoft = "web|gaussian=1.5"\n'
    conf.write_text(recipe)
    (tmp_path / "A").mkdir()
    first = run_imgq("run", root, "--to", tmp_path / "A", "--no-collect", "-j1")
    assert first.returncode == 0, first.stderr
    ids = sorted(first.stdout.split())
    assert len(ids) == 2
    assert q(db_path, "SELECT recipe, count(*) FROM jobs GROUP BY recipe ORDER BY recipe") == [("default", 2), ("soft", 2)]

    # the edit renames the artifact too: an archived NAME.soft.jpg is never replaced by
    # different bytes (archive refuses; see imgq/archive.py), a new name is archived beside it
    conf.write_text(recipe.replace('soft = "web|gaussian=1.5"', 'softer = "web|gaussian=2.5"'))
    jobs_before = q(db_path, "SELECT max(id) FROM jobs")[0][0]
    second = run_imgq("run", root, "--to", tmp_path / "A", "--no-collect", "-j1")
    assert second.returncode == 0, second.stderr
    # new jobs for the edited recipe alone, one per file, done; the files archived again
    assert sorted(q(db_path, "SELECT recipe, file_id FROM jobs WHERE id > ?", jobs_before)) == [("soft", i) for i in ids]
    assert q(db_path, "SELECT count(*) FROM jobs WHERE state != 'done'") == [(0,)]
    assert sorted(second.stdout.split()) == ids
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"archived"}
    # the new outputs exist and each has a copy at the destination
    new_artifacts = q(db_path, "SELECT a.id FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE j.id > ?", jobs_before)
    assert len(new_artifacts) == 2
    for (artifact_id,) in new_artifacts:
        assert q(db_path, "SELECT count(*) FROM copies WHERE artifact_id = ? AND destination = ?", artifact_id, str(tmp_path / "A")) == [(1,)]

    third = run_imgq("run", root, "--to", tmp_path / "A", "--no-collect", "-j1")
    assert third.returncode == 0 and third.stdout == "", third.stderr


def test_run_publishes_the_gallery_when_asked(tmp_path, run_imgq, db_path):
    """`imgq run --publish DIR` (or publish = "DIR" in imgq.toml) does the whole job of
    the dig's daemon: after archive and collect, the gallery is brought up to date."""
    inbox, dest, site = tmp_path / "inbox", tmp_path / "backup", tmp_path / "site"
    dest.mkdir()
    samples.make_photo(inbox / "alice" / "IMG_1.jpg", seed=1, width=320, height=240)
    r = run_imgq("run", "--settle", "0", inbox, "--to", dest, "--publish", site)
    assert r.returncode == 0, r.stderr
    [file_id] = r.stdout.split()
    pages = {p.name for p in (site / "photo").iterdir()}
    assert any(file_id.split("_")[-1].split(".")[0] in p or file_id in p for p in pages), pages
    index = (site / "index.html").read_text()
    assert "alice" in index
    # the gallery's sizes were made in the same run, before collect took the original away
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT state FROM jobs WHERE recipe = 'gallery'").fetchall() == [("done",)]
    assert conn.execute("SELECT state FROM files").fetchall() == [("collected",)]
    conn.close()
    assert "srcset" in next((site / "photo").iterdir()).read_text()
    # from imgq.toml, relative to it: a new photo appears; a run with nothing new writes nothing
    (tmp_path / "imgq.toml").write_text('settle = 0\npublish = "site"\ndestinations = ["backup"]\n')
    samples.make_photo(inbox / "bob" / "IMG_2.jpg", seed=2, width=320, height=240)
    r = run_imgq("run", inbox)
    assert r.returncode == 0, r.stderr
    assert "bob" in (site / "index.html").read_text()
    before = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    r = run_imgq("run", "--json", inbox)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()} == before
