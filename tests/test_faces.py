"""Faces: found in a real face photo and recorded with the job, shown by status and log,
none in a generated landscape; recipes that skip or tag photos without faces."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest
from PIL import Image

from imgq import faces, recipes, samples
from imgq.ledger import faces as ledger_faces, journal, queue
from imgq.ledger.database import DB

skimage_data = pytest.importorskip("skimage.data")

OLD = 1_000_000_000  # an mtime well past any settle window


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def make_face_inbox(root):
    """alice/astronaut.jpg (1024x1024 JPEG of skimage's astronaut: one face) and
    alice/landscape.jpg (a generated 1600x1200 scene: nobody)."""
    (root / "alice").mkdir(parents=True)
    face = root / "alice" / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS).save(face, quality=90)
    land = samples.make_photo(root / "alice" / "landscape.jpg", width=1600, height=1200, seed=11)
    for p in (face, land):
        os.utime(p, (OLD, OLD))
    return {"face": "alice_1000000000_astronaut.jpg", "land": "alice_1000000000_landscape.jpg"}


def test_faces_op_records_count_and_boxes_shown_by_status_and_log(tmp_path, run_imgq, db_path):
    ids = make_face_inbox(tmp_path / "inbox")
    scan = run_imgq("scan", tmp_path / "inbox")
    assert sorted(scan.stdout.split()) == sorted(ids.values()), scan.stderr
    assert run_imgq("enqueue", "--op", "web|faces", "-", input=scan.stdout).returncode == 0
    work = run_imgq("work", "-j2")
    assert work.returncode == 0, work.stderr

    counts = dict(q(db_path, "SELECT file_id, faces FROM face_scans"))
    assert counts == {ids["face"]: 1, ids["land"]: 0}
    [(x, y, w, h)] = q(db_path, "SELECT x, y, w, h FROM faces WHERE file_id = ?", ids["face"])
    # the web version is 480x480; Eileen Collins' face is near x 180-250, y 60-140 of 512
    assert 150 <= x + w / 2 <= 240 and 50 <= y + h / 2 <= 130 and 50 <= w <= 150
    # the artifact is the web version with the box drawn on it
    [(path, aw, ah)] = q(db_path, "SELECT path, width, height FROM artifacts WHERE file_id = ?", ids["face"])
    assert (aw, ah) == (480, 480)
    with Image.open(tmp_path / "imgq-store" / path) as im:
        r, g, b = im.convert("RGB").getpixel((x + 1, y + h // 2))
        assert r > 200 and g < 140 and b < 100  # the orange-red outline

    status = json.loads(run_imgq("status", "--json").stdout)
    assert status["faces"] == {"photos_scanned": 2, "photos_with_faces": 1, "faces_found": 1, "tagged_no_faces": 0, "skipped_no_faces": 0}
    assert "faces: 1 found in 1 of 2 photos scanned" in run_imgq("status").stdout

    log = run_imgq("log", ids["face"])
    assert log.returncode == 0
    [line] = [ln for ln in log.stdout.splitlines() if "faces:" in ln]
    assert f"1 face at {x},{y} {w}x{h} (in 480x480)" in line
    assert log.stdout.splitlines()[-1] == line  # after the job's completion
    assert "0 faces" in run_imgq("log", ids["land"]).stdout
    entries = [json.loads(ln) for ln in run_imgq("log", "--json", ids["face"]).stdout.splitlines()]
    [scan_entry] = [e for e in entries if e["entity"] == "faces"]
    assert scan_entry["boxes"] == [[x, y, w, h]] and scan_entry["frame"] == [480, 480]

    # the gallery's view: boxes with their frame and as fractions of it
    db = DB(db_path)
    [face] = faces.faces_for(db, ids["face"])
    assert (face["x"], face["y"], face["w"], face["h"], face["frame"]) == (x, y, w, h, [480, 480])
    assert face["rel"] == [round(x / 480, 5), round(y / 480, 5), round(w / 480, 5), round(h / 480, 5)]
    assert faces.faces_for(db, ids["land"]) == [] and faces.faces_for(db, "no-such-file") == []
    assert faces.face_counts(db) == {ids["face"]: 1, ids["land"]: 0}


CONFIG = """
enqueue = ["default", "people", "marked"]

[recipes.people]
web = "web|faces"
on_no_faces = "skip"

[recipes.marked]
small = "fit:320x320|faces"
on_no_faces = "tag"
"""


def test_recipes_skip_or_tag_photos_without_faces(tmp_path, run_imgq, db_path):
    ids = make_face_inbox(tmp_path / "inbox")
    (tmp_path / "imgq.toml").write_text(CONFIG)
    run_imgq("scan", tmp_path / "inbox")
    enq = run_imgq("enqueue")  # the enqueue list of imgq.toml: three recipes
    assert enq.returncode == 0, enq.stderr
    assert q(db_path, "SELECT recipe, count(*) FROM jobs GROUP BY recipe ORDER BY recipe") == [("default", 2), ("marked", 2), ("people", 2)]
    assert run_imgq("work", "-j2").returncode == 0

    def made(file_id):
        return dict(q(db_path, "SELECT j.recipe, count(a.id) FROM jobs j LEFT JOIN artifacts a ON a.job_id = j.id WHERE j.file_id = ? GROUP BY j.recipe", file_id))

    # every job is done and every file processed: tags are not states
    assert q(db_path, "SELECT DISTINCT state FROM jobs") == [("done",)]
    assert q(db_path, "SELECT DISTINCT state FROM files") == [("processed",)]
    assert made(ids["face"]) == {"default": 2, "people": 1, "marked": 1}
    assert made(ids["land"]) == {"default": 2, "people": 0, "marked": 1}  # skip keeps nothing, tag keeps
    tags = q(db_path, "SELECT file_id, tag, source, detail FROM tags ORDER BY source")
    assert [t[:3] for t in tags] == [(ids["land"], "no_faces", "marked"), (ids["land"], "no_faces", "people")]
    assert "skipped" in tags[1][3] and "kept" in tags[0][3]
    [(result,)] = q(db_path, "SELECT result FROM jobs WHERE file_id = ? AND recipe = 'people'", ids["land"])
    assert "no faces found" in json.loads(result)["skipped"]

    status = json.loads(run_imgq("status", "--json").stdout)["faces"]
    assert status["tagged_no_faces"] == 1 and status["skipped_no_faces"] == 1 and status["photos_with_faces"] == 1
    log = run_imgq("log", ids["land"]).stdout
    assert "tagged no_faces by recipe people: skipped" in log and "tagged no_faces by recipe marked" in log


def _claimed_job(db, tmp_path, recipe, spec, now):
    (tmp_path / "in").mkdir(exist_ok=True)
    with db.transaction():
        journal.add_file(db, {"id": "f1", "inbox": str(tmp_path / "in"), "path": "a.jpg", "owner": "a"}, state="seen", now=now)
    queue.enqueue(db, ["f1"], {recipe: spec}, now=now, max_attempts=3)
    [claim] = queue.claim(db, owner="w", limit=1, lease_seconds=60, now=now)
    return claim


def test_faces_are_recorded_with_completion_and_a_newer_job_speaks_for_the_file(tmp_path):
    db = DB(tmp_path / "imgq.db")
    now = time.time()
    spec = {"web": "web|faces", "on_no_faces": "tag"}
    first = _claimed_job(db, tmp_path, "people", spec, now)
    # the worker that lost its lease reports faces: nothing of it is recorded
    stale = queue.Outcome(first, artifacts=[], result={"web": {"faces": [[1, 2, 3, 4]], "frame": [640, 480]}})
    stale.claim = queue.Claim(**{**first.__dict__, "token": "not-the-token"})
    assert queue.settle(db, [stale], now=now).lost == [first.job_id]
    assert q(db.path, "SELECT count(*) FROM face_scans") == [(0,)]
    # the real completion, nobody found: tagged
    assert queue.settle(db, [queue.Outcome(first, artifacts=[], result={"web": {"faces": [], "frame": [640, 480]}})], now=now).done
    assert [t["tag"] for t in faces.tags_of(db, "f1")] == ["no_faces"]
    assert faces.faces_for(db, "f1") == []

    # the recipe changes, its new job finds two faces: they speak for the file, the tag goes
    spec2 = {"web": "fit:800x600|faces", "on_no_faces": "tag"}
    queue.enqueue(db, ["f1"], {"people": spec2}, now=now + 1, max_attempts=3)
    [second] = queue.claim(db, owner="w", limit=1, lease_seconds=60, now=now + 1)
    boxes = [[400, 100, 80, 80], [100, 120, 60, 60]]
    art = queue.Artifact("web", "f1/web.jpg", "0" * 64, 10, 800, 600)
    queue.settle(db, [queue.Outcome(second, artifacts=[art], result={"web": {"faces": boxes}})], now=now + 1)
    got = faces.faces_for(db, "f1")
    assert [(f["x"], f["y"], f["w"], f["h"]) for f in got] == [(100, 120, 60, 60), (400, 100, 80, 80)]
    assert got[0]["frame"] == [800, 600] and got[0]["rel"] == [0.125, 0.2, 0.075, 0.1]  # frame from the artifact
    assert faces.tags_of(db, "f1") == []
    assert faces.summary(db) == {"photos_scanned": 1, "photos_with_faces": 1, "faces_found": 2, "tagged_no_faces": 0, "skipped_no_faces": 0}
    assert [s["faces"] for s in faces.scans_of(db, "f1")] == [0, 2]  # history keeps both


def test_record_refuses_to_run_outside_the_completing_transaction(tmp_path):
    db = DB(tmp_path / "imgq.db")
    with pytest.raises(RuntimeError, match="transaction"):
        ledger_faces.record(db, job_id=1, file_id="f", recipe="r", spec={}, result={"w": {"faces": []}}, now=0)


def test_skip_needs_a_faces_step_and_only_skips_when_every_scan_is_empty():
    assert faces.skips({"on_no_faces": "skip"}, {"a": {"faces": []}, "b": {"faces": []}, "seconds": 1})
    assert not faces.skips({"on_no_faces": "skip"}, {"a": {"faces": []}, "b": {"faces": [[1, 1, 2, 2]]}})
    assert not faces.skips({"on_no_faces": "tag"}, {"a": {"faces": []}})
    assert not faces.skips({"on_no_faces": "skip"}, {"seconds": 1})  # no faces step ran


def test_a_recipe_option_is_not_taken_for_a_chain_when_splitting(tmp_path):
    # --split looks at a recipe's chains to see whether stripes are worth it; its options
    # (on_no_faces = "skip") must not be read as a chain
    db = DB(tmp_path / "imgq.db")
    (tmp_path / "in").mkdir()
    with db.transaction():
        journal.add_file(db, {"id": "big", "inbox": str(tmp_path / "in"), "path": "a.jpg", "owner": "a", "width": 8000, "height": 6000}, state="seen", now=0)
    spec = {"web": "median:5|web|faces", "on_no_faces": "skip"}
    [r] = queue.enqueue(db, ["big"], {"people": spec}, now=0, max_attempts=3, split=queue.SplitPolicy(min_pixels=10_000_000, stripes=2))
    assert r.created and q(db.path, "SELECT DISTINCT spec FROM jobs") == [(json.dumps(recipes.normalize_recipe(spec), sort_keys=True),)]
