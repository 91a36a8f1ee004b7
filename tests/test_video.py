"""Videos as first-class media: scan recognises containers by content and records what
they are; a damaged or false "video" fails naming the file (issue 12)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from imgq import scan
from imgq.ledger.database import DB
from imgq.samples import video as clips

needs_ffmpeg = pytest.mark.skipif(not clips.have_ffmpeg(), reason="needs the ffmpeg and ffprobe programs (apt-get install ffmpeg)")


def files(db_path) -> dict[str, dict]:
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return {Path(r["path"]).name: dict(r) for r in c.execute("SELECT * FROM files")}


def scan_inbox(db_path, inbox) -> scan.ScanReport:
    db = DB(db_path)
    try:
        return scan.scan(db, [inbox], now=time.time())
    finally:
        db.close()


def test_scan_records_videos_of_each_container_beside_photos(tmp_path, db_path, photo):
    inbox = tmp_path / "inbox"
    photo(inbox / "ann" / "IMG_1.jpg")
    clips.make_clip(inbox / "ann" / "walk.avi", width=160, height=120, frames=30, fps=25)
    clips.make_clip(inbox / "ann" / "walk.mp4", width=176, height=144, frames=50, fps=25, seed=1)
    clips.make_clip(inbox / "bob" / "walk.webm", width=128, height=96, frames=20, fps=10, seed=2)
    clips.make_clip(inbox / "bob" / "walk.mkv", width=96, height=64, frames=12, fps=24, seed=3)
    report = scan_inbox(db_path, inbox)
    assert not report.failed and not report.problems, (report.failed, report.problems)
    rows = files(db_path)
    assert rows["IMG_1.jpg"]["kind"] == "photo" and rows["IMG_1.jpg"]["duration"] is None
    want = {
        "walk.avi": ("AVI", 160, 120, 30, 25.0, 1.2),
        "walk.mp4": ("MP4", 176, 144, 50, 25.0, 2.0),
        "walk.webm": ("WEBM", 128, 96, 20, 10.0, 2.0),
        "walk.mkv": ("MKV", 96, 64, 12, 24.0, 0.5),
    }
    for name, (fmt, w, h, frames, fps, seconds) in want.items():
        row = rows[name]
        assert (row["kind"], row["format"], row["width"], row["height"], row["state"]) == ("video", fmt, w, h, "seen"), row
        assert row["frame_rate"] == pytest.approx(fps) and row["duration"] == pytest.approx(seconds, abs=0.11), row
        meta = json.loads(row["meta"])
        assert meta["frames"] == frames and meta["rotation"] == 0
        assert row["taken_source"] in ("mtime", "container") and row["owner"] in ("ann", "bob")
    # the journal: each video got its 'seen' event like a photo
    with sqlite3.connect(db_path) as c:
        seen = {r[0] for r in c.execute("SELECT file_id FROM events WHERE entity = 'file' AND to_state = 'seen'")}
    assert {rows[n]["id"] for n in want} <= seen


def test_a_copied_video_is_a_duplicate_and_an_unchanged_one_is_not_read_again(tmp_path, db_path):
    inbox = tmp_path / "inbox"
    clip = clips.make_clip(inbox / "ann" / "a.mp4", frames=20)
    (inbox / "bob").mkdir()
    (inbox / "bob" / "copy.mp4").write_bytes(clip.read_bytes())
    scan_inbox(db_path, inbox)
    rows = files(db_path)
    assert rows["copy.mp4"]["state"] == "duplicate" and rows["copy.mp4"]["duplicate_of"] == rows["a.mp4"]["id"]
    again = scan_inbox(db_path, inbox)
    assert again.found == [] and again.unchanged == 2


@needs_ffmpeg
def test_scan_reads_rotation_creation_time_and_audio_of_a_phone_clip(tmp_path, db_path):
    inbox = tmp_path / "inbox"
    clips.make_clip_ffmpeg(inbox / "ann" / "phone.mp4", width=160, height=120, seconds=2, rotate=90, creation_time="2021-06-01T12:34:56Z")
    clips.make_clip_ffmpeg(inbox / "ann" / "quiet.mov", width=96, height=64, seconds=1, audio=False)
    report = scan_inbox(db_path, inbox)
    assert not report.failed, report.failed
    rows = files(db_path)
    phone, quiet = rows["phone.mp4"], rows["quiet.mov"]
    assert (phone["width"], phone["height"], phone["duration"], phone["frame_rate"]) == (160, 120, 2.0, 25.0)
    assert (phone["taken_at"], phone["taken_source"]) == ("2021-06-01T12:34:56", "container")
    assert "_1622550896_" in phone["id"]  # the id carries the capture time, as a photo's does
    meta = json.loads(phone["meta"])
    assert meta == {"rotation": 90, "frames": 50, "codec": "h264", "audio": "aac"}
    assert json.loads(quiet["meta"]).get("audio") is None and json.loads(quiet["meta"])["rotation"] == 0
    assert quiet["taken_source"] == "mtime"  # ffmpeg wrote no creation time


def test_damaged_and_false_videos_fail_naming_the_file(tmp_path, db_path):
    inbox = tmp_path / "inbox"
    good = clips.make_clip(tmp_path / "good.mp4", frames=40)
    data = good.read_bytes()
    (inbox / "ann").mkdir(parents=True)
    (inbox / "ann" / "cut.mp4").write_bytes(data[: len(data) // 2])  # mp4v: the index (moov) is at the end
    avi = clips.make_clip(tmp_path / "good.avi", frames=40).read_bytes()
    (inbox / "ann" / "cut.avi").write_bytes(avi[: len(avi) * 2 // 3])
    (inbox / "ann" / "empty.mp4").write_bytes(b"")
    (inbox / "ann" / "notes.mp4").write_text("these are my notes, not a video\n")
    (inbox / "ann" / "header-only.mp4").write_bytes(data[:64])
    report = scan_inbox(db_path, inbox)
    failed = {Path(f.path).name: f.reason for f in report.failed}
    assert set(failed) == {"cut.mp4", "cut.avi", "empty.mp4", "notes.mp4", "header-only.mp4"}, failed
    assert failed["empty.mp4"] == "empty file (0 bytes)"
    assert failed["notes.mp4"].startswith("not an image or video") and 'the text "these are my not' in failed["notes.mp4"]
    for name in ("cut.mp4", "cut.avi", "header-only.mp4"):
        assert name in failed[name] and ("truncated" in failed[name] or "corrupt" in failed[name]), failed[name]
    rows = files(db_path)
    assert {rows[n]["state"] for n in failed} == {"failed"}
    assert rows["cut.mp4"]["kind"] == "video" and rows["notes.mp4"]["kind"] == "photo"
