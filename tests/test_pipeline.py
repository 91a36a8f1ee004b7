"""The commands end to end, as real subprocesses on real generated photos."""

import fcntl
import json
import os
import sqlite3

import pytest
from PIL import Image

from imgq import samples
from imgq.ledger.database import DB, lock_path


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def artifacts(tmp_path, db_path, file_id):
    store = tmp_path / "imgq-store"
    return {name: store / path for name, path in q(db_path, "SELECT name, path FROM artifacts WHERE file_id = ?", file_id)}


def test_pipe_scan_enqueue_work_and_second_run_changes_nothing(tmp_path, inbox, run_imgq, db_path):
    scan = run_imgq("scan", inbox)
    assert scan.returncode == 0, scan.stderr
    ids = scan.stdout.split()
    assert ids and all("/" not in i for i in ids)
    enq = run_imgq("enqueue", "-", input=scan.stdout)
    assert enq.returncode == 0, enq.stderr
    assert enq.stdout.split() == ids
    work = run_imgq("work", "-j2", "--drain")
    assert work.returncode == 1, work.stderr  # the truncated JPEG fails; the rest goes on
    [broken] = [i for i in ids if "truncated" in i]
    assert "truncated" in work.stderr
    ids.remove(broken)
    assert sorted(work.stdout.split()) == sorted(ids)
    assert {s for (s,) in q(db_path, "SELECT state FROM files WHERE id IN (%s)" % ",".join("?" * len(ids)), *ids)} == {"processed"}
    for file_id in ids:
        outs = artifacts(tmp_path, db_path, file_id)
        assert set(outs) == {"thumb", "web"}
        with Image.open(outs["thumb"]) as t:
            assert t.width <= 120 and t.height <= 90 and (t.width == 120 or t.height == 90)
        with Image.open(outs["web"]) as w:
            assert w.width <= 640 and w.height <= 480 and (w.width == 640 or w.height == 480)
    # the duplicate was recognised and never processed
    dups = q(db_path, "SELECT id, duplicate_of FROM files WHERE state = 'duplicate'")
    assert len(dups) == 1 and dups[0][1] in ids
    assert q(db_path, "SELECT count(*) FROM jobs WHERE file_id = ?", dups[0][0]) == [(0,)]

    events = q(db_path, "SELECT count(*) FROM events")
    again_scan = run_imgq("scan", inbox)
    assert again_scan.stdout == "" and again_scan.returncode == 0
    again_enq = run_imgq("enqueue", "-", input=again_scan.stdout)
    assert again_enq.stdout == "" and again_enq.returncode == 0
    assert run_imgq("enqueue").stdout == ""
    again_work = run_imgq("work", "--drain")
    assert again_work.stdout == "" and again_work.returncode == 0
    assert q(db_path, "SELECT count(*) FROM events") == events


def test_rotated_photo_gives_upright_outputs(tmp_path, run_imgq, db_path):
    src = tmp_path / "inbox" / "alice" / "portrait.jpg"
    samples.make_photo(src, width=1200, height=900, orientation=6, seed=3)
    os.utime(src, (1e9, 1e9))
    [file_id] = run_imgq("scan", tmp_path / "inbox").stdout.split()
    run_imgq("enqueue", file_id)
    assert run_imgq("work", "-j1").returncode == 0
    outs = artifacts(tmp_path, db_path, file_id)
    with Image.open(outs["web"]) as w:
        assert w.size == (360, 480)  # stored 1200x900 on its side: upright it is 900x1200
        assert samples.is_upright(w)
        assert w.getexif().get(0x0112, 1) == 1
    with Image.open(outs["thumb"]) as t:
        assert t.size == (68, 90)
        assert samples.is_upright(t)


def test_bad_inputs_fail_with_reasons_and_the_batch_goes_on(tmp_path, run_imgq, db_path):
    box = tmp_path / "inbox" / "carol"
    samples.make_photo(box / "good.jpg", seed=1)
    samples.make_truncated_jpeg(box / "truncated.jpg")
    samples.make_zero_byte(box / "empty.jpg")
    samples.make_text_as_jpg(box / "notes.jpg")
    samples.make_random_png(box / "noise.png")
    samples.make_decompression_bomb(box / "bomb.png")
    for p in box.iterdir():
        os.utime(p, (1e9, 1e9))
    scan = run_imgq("scan", tmp_path / "inbox")
    assert scan.returncode == 1
    run_imgq("enqueue", "-", input=scan.stdout)
    work = run_imgq("work", "-j2")
    assert work.returncode == 1
    state = dict(q(db_path, "SELECT path, state FROM files"))
    assert state.pop("carol/good.jpg") == "processed"
    assert set(state.values()) == {"failed"}, state
    reasons = dict(q(db_path, "SELECT path, error FROM files WHERE state = 'failed'"))
    assert "empty" in reasons["carol/empty.jpg"]
    assert "not an image" in reasons["carol/notes.jpg"]
    assert "not an image" in reasons["carol/noise.png"] or "cannot identify" in reasons["carol/noise.png"]
    assert "truncated" in reasons["carol/truncated.jpg"].lower() and "truncated.jpg" in reasons["carol/truncated.jpg"]
    assert "decompression bomb" in reasons["carol/bomb.png"] or "limit" in reasons["carol/bomb.png"]
    # permanent errors are not retried: every job that ran, ran once
    assert {a for (a,) in q(db_path, "SELECT attempts FROM jobs WHERE state = 'failed'")} <= {1}
    st = json.loads(run_imgq("status", "--json").stdout)
    assert st["files"]["failed"] == 5 and len(st["failures"]) == 5


def test_hostile_names_are_processed_like_any_other(tmp_path, run_imgq, db_path):
    sample = samples.make_inbox(tmp_path / "inbox", per_owner=1, size=(320, 240), with_hostile_names=True, with_broken=False, with_duplicate=False)
    scan = run_imgq("scan", sample)
    assert scan.returncode == 0, scan.stderr
    run_imgq("enqueue", "-", input=scan.stdout)
    work = run_imgq("work", "-j2")
    assert work.returncode == 0, work.stderr
    paths = dict(q(db_path, "SELECT path, state FROM files"))
    hostile = [p for p in paths if any(ch in p for ch in " '\"$;") or p.split("/")[-1].startswith("-") or not p.isascii()]
    assert len(hostile) >= 5
    assert all(paths[p] == "processed" for p in hostile), paths
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("PWNED*"))
    for (file_id,) in q(db_path, "SELECT id FROM files"):
        assert not file_id.startswith("-") and "\n" not in file_id and "/" not in file_id


def test_empty_stdin_means_nothing(inbox, run_imgq, db_path):
    run_imgq("scan", inbox)
    enq = run_imgq("enqueue", "-", input="")
    assert enq.returncode == 0 and enq.stdout == ""
    assert q(db_path, "SELECT count(*) FROM jobs") == [(0,)]


def test_json_output_is_one_object_per_line(inbox, run_imgq):
    lines = run_imgq("scan", "--json", inbox).stdout.splitlines()
    objs = [json.loads(line) for line in lines]
    assert {o["state"] for o in objs} == {"seen", "duplicate"}  # the truncated JPEG fails later, in work
    enq = run_imgq("enqueue", "-", input="\n".join(lines))  # NDJSON pipes too
    assert enq.returncode == 0 and len(enq.stdout.split()) == sum(o["state"] == "seen" for o in objs)


def test_usage_errors_exit_2(run_imgq, db_path):
    DB(db_path).close()  # `log` refuses a missing database; here it must look for the id
    assert run_imgq("work", "--drain", "--follow").returncode == 2
    assert run_imgq("scan").returncode == 2
    assert run_imgq("frobnicate").returncode == 2
    r = run_imgq("enqueue", "--op", "sparkle=3")
    assert r.returncode != 0 and "sparkle" in r.stderr and "Traceback" not in r.stderr
    r = run_imgq("log", "nope")
    assert r.returncode == 2 and "nope" in r.stderr


def test_overlapping_runs_of_a_step_do_not_collide(inbox, run_imgq, db_path):
    DB(db_path).close()  # the database, as a first scan makes it
    fd = os.open(lock_path(db_path, "scan"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run_imgq("scan", inbox)
        assert r.returncode == 0 and r.stdout == "" and "another" in r.stderr
        assert q(db_path, "SELECT count(*) FROM files") == [(0,)]
    finally:
        os.close(fd)
    assert run_imgq("scan", inbox).stdout != ""


def test_log_shows_the_whole_history(inbox, run_imgq):
    ids = run_imgq("scan", inbox).stdout.split()
    run_imgq("enqueue", *ids[:1])
    run_imgq("work", "-j1")
    events = [json.loads(line) for line in run_imgq("log", "--json", ids[0]).stdout.splitlines()]
    transitions = [(e["entity"], e["from_state"], e["to_state"]) for e in events]
    assert transitions == [
        ("file", None, "seen"),
        ("job", None, "ready"),
        ("file", "seen", "queued"),
        ("job", "ready", "leased"),
        ("job", "leased", "done"),
        ("file", "queued", "processed"),
    ]
    text = run_imgq("log", ids[0]).stdout
    assert "leased -> done" in text and "queued -> processed" in text


def test_scan_skips_temporary_hidden_and_settling_files_and_symlinks(tmp_path, run_imgq, db_path):
    root = tmp_path / "inbox"
    samples.make_photo(root / "alice" / "ok.jpg", seed=1)
    samples.make_photo(root / "alice" / ".hidden.jpg", seed=2)
    samples.make_photo(root / "alice" / "upload.jpg.part", seed=3)
    samples.make_photo(root / "alice" / "x.crdownload", seed=4)
    samples.make_photo(root / ".dropbox.cache" / "y.jpg", seed=5)
    outside = tmp_path / "outside"
    samples.make_photo(outside / "secret.jpg", seed=6)
    (root / "mallory").symlink_to(outside)
    (root / "alice" / "loop").symlink_to(root)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1e9, 1e9))
    samples.make_photo(root / "alice" / "fresh.jpg", seed=7)  # just written: still settling
    r = run_imgq("scan", "--settle", "30", root)
    assert r.returncode == 0, r.stderr
    assert [p for (p,) in q(db_path, "SELECT path FROM files")] == ["alice/ok.jpg"]
    assert run_imgq("scan", "--settle", "0", root).stdout.strip().endswith("fresh.jpg")


def test_transient_errors_retry_with_backoff_then_fail_with_the_reason(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text("backoff_seconds = 0.2\nmax_attempts = 3\n")
    src = tmp_path / "inbox" / "dora" / "gone.jpg"
    samples.make_photo(src, seed=4)
    os.utime(src, (1e9, 1e9))
    ids = run_imgq("scan", tmp_path / "inbox").stdout.split()
    run_imgq("enqueue", *ids)
    src.unlink()  # vanished from the inbox (a share went away): not the photo's fault
    work = run_imgq("work", "-j1")
    assert work.returncode == 1
    [(state, attempts, error)] = q(db_path, "SELECT state, attempts, error FROM jobs")
    assert state == "failed" and attempts == 3
    assert "gave up after 3 attempts" in error and "gone.jpg" in error
    retried = q(db_path, "SELECT count(*) FROM events WHERE to_state = 'ready' AND detail LIKE 'retry in%'")
    assert retried == [(2,)]
    # the person fixes it and re-arms the job
    samples.make_photo(src, seed=4)
    assert run_imgq("retry").stdout.split() == ["1"]
    assert run_imgq("work", "-j1").returncode == 0
    assert q(db_path, "SELECT state FROM files") == [("processed",)]


def test_work_once_leaves_jobs_in_backoff_for_a_later_run(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text("backoff_seconds = 600\n")
    src = tmp_path / "inbox" / "dora" / "later.jpg"
    samples.make_photo(src, seed=5)
    os.utime(src, (1e9, 1e9))
    ids = run_imgq("scan", tmp_path / "inbox").stdout.split()
    run_imgq("enqueue", *ids)
    src.rename(src.with_suffix(".away"))  # the share is briefly gone
    once = run_imgq("work", "--once", "-j1", timeout=60)
    assert once.returncode == 0, once.stderr
    [(state, not_before)] = q(db_path, "SELECT state, not_before FROM jobs")
    assert state == "ready" and not_before > 0
    src.with_suffix(".away").rename(src)
    assert run_imgq("work", "--once", "-j1").stdout == ""  # still waiting out its backoff
    run_imgq("retry")  # nothing failed: retry re-arms only failed jobs
    assert q(db_path, "SELECT state FROM jobs") == [("ready",)]


def test_a_photo_replaced_in_the_inbox_before_archiving_is_recorded_anew(tmp_path, run_imgq, db_path):
    src = tmp_path / "inbox" / "erin" / "edit.jpg"
    samples.make_photo(src, seed=8)
    os.utime(src, (1e9, 1e9))
    [old] = run_imgq("scan", tmp_path / "inbox").stdout.split()
    run_imgq("enqueue", old)
    run_imgq("work", "-j1")
    samples.make_photo(src, seed=9)  # the photographer re-exported it under the same name
    os.utime(src, (1e9 + 60, 1e9 + 60))
    [new] = run_imgq("scan", tmp_path / "inbox").stdout.split()
    assert new != old
    states = dict(q(db_path, "SELECT id, state FROM files"))
    assert states == {old: "failed", new: "seen"}
    [(error,)] = q(db_path, "SELECT error FROM files WHERE id = ?", old)
    assert "changed in the inbox" in error and new in error
