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
from sshhosts import ssh_hosts  # noqa: F401
from test_gallery import serve  # noqa: F401
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
    hostile = clips.make_clip(inbox / "bob" / "$(touch PWNED) 'x' `id`.mp4", width=64, height=48, frames=10, seed=5)
    (inbox / "bob" / "song.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2" + bytes(64))
    report = scan_inbox(db_path, inbox)
    failed = {Path(f.path).name: f.reason for f in report.failed}
    assert list(failed) == ["song.m4a"] and failed["song.m4a"].startswith("not an image or video"), failed
    report.found = [f for f in report.found if f.state != "failed"]
    assert not report.failed and not report.problems, (report.failed, report.problems)
    rows = files(db_path)
    assert rows["IMG_1.jpg"]["kind"] == "photo" and rows["IMG_1.jpg"]["duration"] is None
    assert rows[hostile.name]["kind"] == "video" and rows[hostile.name]["state"] == "seen"
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
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


# ---------------------------------------------------------------- posters and previews


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def read_video(path) -> tuple[int, float, tuple[int, int], list]:
    """(frames decoded, fps, (width, height), the frames) of a video file, by OpenCV."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return len(frames), fps, (frames[0].shape[1], frames[0].shape[0]) if frames else (0, 0), frames


def ffprobe_streams(path) -> list[dict]:
    import subprocess

    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)


def test_the_default_recipe_keeps_photos_jobs_and_gives_videos_a_preview():
    from imgq import recipes
    from imgq.config import DEFAULT_RECIPES

    default = DEFAULT_RECIPES["default"]
    # the hash photos' default jobs had before videos: a photo gets no new job on upgrade
    assert recipes.spec_hash(recipes.for_kind(default, "photo")) == recipes.spec_hash({"thumb": "thumb", "web": "web"})
    assert set(recipes.for_kind(default, "video")) == {"thumb", "web", "preview"}
    assert recipes.normalize_recipe({"p": "preview"}) == {"p": "video:size=640x480,fps=30,crf=28,kbps=0,start=0,end=0,codec=auto"}
    with pytest.raises(Exception, match="first step"):
        recipes.normalize_recipe({"p": "web|video"})


DARK = "$(touch PWNED) 'dark' `id`.avi"  # opens on black; a hostile name


@needs_ffmpeg
def test_a_video_goes_scan_enqueue_work_to_poster_stills_and_an_h264_preview_with_audio(tmp_path, run_imgq, db_path, photo):
    from PIL import Image

    inbox = tmp_path / "inbox"
    photo(inbox / "ann" / "IMG_1.jpg")
    clips.make_clip_ffmpeg(inbox / "ann" / "phone.mp4", width=800, height=600, seconds=2, fps=50, rotate=90)
    clips.make_clip(inbox / "bob" / DARK, width=320, height=240, frames=40, fps=20, black_frames=10)
    old = time.time() - 120
    for p in inbox.rglob("*.*"):
        os.utime(p, (old, old))
    assert run_imgq("scan", inbox).returncode == 0
    enq = run_imgq("enqueue")
    assert enq.returncode == 0, enq.stderr
    work = run_imgq("work", "-j2", "--drain", timeout=300)
    assert work.returncode == 0, work.stderr
    rows = files(db_path)
    assert {r["state"] for r in rows.values()} == {"processed"}
    store = tmp_path / "imgq-store"

    def arts(name):
        return {n: (store / p, w, h) for n, p, w, h in q(db_path, "SELECT name, path, width, height FROM artifacts WHERE file_id = ?", rows[name]["id"])}

    assert set(arts("IMG_1.jpg")) == {"thumb", "web"}
    phone = arts("phone.mp4")
    assert set(phone) == {"thumb", "web", "preview"}
    path, w, h = phone["preview"]
    assert path.suffix == ".mp4" and (w, h) == (360, 480)  # turned upright (600x800), fit within 640x480
    info = ffprobe_streams(path)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and kinds["audio"]["codec_name"] == "aac"
    n, fps, size, _ = read_video(path)
    assert (n, fps, size) == (60, 30.0, (360, 480))  # 50 fps capped at 30: 2 s -> 60 frames
    assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.1)
    with Image.open(phone["web"][0]) as web, Image.open(phone["thumb"][0]) as thumb:
        assert web.size == (360, 480) and thumb.size == (68, 90)
    [(result,)] = q(db_path, "SELECT result FROM jobs WHERE file_id = ?", rows["phone.mp4"]["id"])
    assert json.loads(result)["preview"]["encoder"].startswith("ffmpeg libx264/aac")
    # a clip that opens on black: its poster is a frame with content
    dark = arts(DARK)
    with Image.open(dark["web"][0]) as web:
        assert web.size == (320, 240) and max(web.convert("L").getextrema()) > 100
    n, fps, size, _ = read_video(dark["preview"][0])
    assert (n, fps, size) == (40, 20.0, (320, 240))
    assert not list(tmp_path.rglob("PWNED"))  # the name never reached a shell or a command line


def test_without_ffmpeg_the_preview_is_webm_made_by_opencv_and_says_so(tmp_path):
    from imgq.imaging import video_encode as v

    clip = clips.make_clip(tmp_path / "in.avi", width=330, height=250, frames=24, fps=24)
    fd = os.open(clip, os.O_RDONLY)
    try:
        for codec, tag in (("vp8", "opencv vp8 webm"), ("vp9", "opencv vp9 webm")):
            saved = v.encode_video(fd, "in.avi", f"video:size=200x200,codec={codec},start=0.25,end=0.75|brightness=1.5", lambda ext: tmp_path / f"{codec}.{ext}")
            assert (saved.encoder, saved.ext, saved.width, saved.height, saved.frames) == (tag, "webm", 200, 152, 12)
            n, fps, size, frames = read_video(tmp_path / f"{codec}.webm")
            assert (n, size) == (12, (200, 152))  # 330x250 within 200x200, even sides
            assert frames[0].mean() > 1.15 * clips.frame(200, 152, 6).mean()  # brightness=1.5 ran on every frame
        # the auto codec falls back to OpenCV on a machine without the ffmpeg program
        saved = v.encode_video(fd, "in.avi", "preview", lambda ext: tmp_path / f"auto.{ext}", ffmpeg=None)
        assert (saved.encoder, saved.width, saved.height, saved.frames) == ("opencv vp8 webm", 330, 250, 24)
        assert read_video(tmp_path / "auto.webm")[0] == 24
    finally:
        os.close(fd)


# ---------------------------------------------------------------- archive, collect, status, report


def sha256_of(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_a_video_is_archived_with_verified_copies_then_collected_and_counted_apart(tmp_path, run_imgq, db_path, photo):
    inbox = tmp_path / "inbox"
    photo(inbox / "ann" / "IMG_1.jpg")
    clips.make_clip(inbox / "ann" / "walk.avi", width=320, height=240, frames=90, fps=30)  # 3 s
    clips.make_clip(inbox / "bob" / "run.mp4", width=320, height=240, frames=150, fps=25, seed=4)  # 6 s
    old = time.time() - 120
    for p in inbox.rglob("*.*"):
        os.utime(p, (old, old))
    assert run_imgq("scan", inbox).returncode == 0
    assert run_imgq("enqueue").returncode == 0
    work = run_imgq("work", "-j2", timeout=300)
    assert work.returncode == 0, work.stderr
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    r = run_imgq("archive", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    rows = files(db_path)
    for name in ("walk.avi", "run.mp4"):
        row = rows[name]
        assert row["state"] == "archived"
        copies = q(db_path, "SELECT c.destination, c.path, c.sha256, c.verified_at, a.name FROM copies c LEFT JOIN artifacts a ON a.id = c.artifact_id WHERE c.file_id = ?", row["id"])
        for dest in (a, b):
            mine = {art: (Path(dest) / path, sha, verified) for d, path, sha, verified, art in copies if d == str(dest)}
            assert set(mine) == {None, "thumb", "web", "preview"}, mine  # the original and every artifact
            for art, (path, sha, verified) in mine.items():
                assert verified and sha256_of(path) == sha
            assert mine[None][1] == row["sha256"] and mine["preview"][0].suffix == ".mp4"
    status = json.loads(run_imgq("status", "--json").stdout)
    assert status["media"] == {"photos": 1, "videos": 2, "video_seconds": 9.0, "video_hours": round(9 / 3600, 3)}
    assert "media: 1 photos, 2 videos (9 s of video)" in run_imgq("status").stdout
    # the photos view lists the videos too, saying which they are and how long
    assert {p: (k, d) for p, k, d in q(db_path, "SELECT path, kind, duration FROM photos")} == {"ann/IMG_1.jpg": ("photo", None), "ann/walk.avi": ("video", 3.0), "bob/run.mp4": ("video", 6.0)}
    report = json.loads(run_imgq("report", "--last", "work", "--json").stdout)
    assert report["videos"] == {"read": 2, "seconds": 9.0, "hours": round(9 / 3600, 3)} and report["photos"]["read"] == 1
    assert "videos:     2 read, 9 s of video; 1 photos read" in run_imgq("report", "--last", "work").stdout
    r = run_imgq("collect", "--to", a, "--to", b)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(row["id"] for row in rows.values())
    assert not (inbox / "ann" / "walk.avi").exists() and not (inbox / "bob" / "run.mp4").exists()
    assert {row["state"] for row in files(db_path).values()} == {"collected"}


# ---------------------------------------------------------------- large files under a memory limit

GiB = 1 << 30
MEMORY_LIMIT = GiB + GiB // 4  # address space of each imgq process (and what it runs: ffmpeg)


def big_video(path: Path, size: int) -> Path:
    """A playable MP4 of ``size`` bytes: a short clip followed by a top-level ``free`` box
    (players skip it), sparse on disk so the test costs no disk space, while every reader
    still reads all of it."""
    import struct

    clips.make_clip(path, width=320, height=240, frames=50, fps=25)
    start = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(struct.pack(">I4s", size - start, b"free"))
        f.truncate(size)
    old = time.time() - 120
    os.utime(path, (old, old))
    return path


def run_limited(tmp_path, *args, limit: int = MEMORY_LIMIT, timeout: float = 600):
    """The CLI in a child whose address space is limited (RLIMIT_AS, set in the child)."""
    import resource
    import subprocess
    import sys

    from conftest import imgq_env

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "imgq", *map(str, args)], cwd=tmp_path, env=imgq_env(), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, preexec_fn=limit_memory, timeout=timeout,
    )


def test_a_video_larger_than_the_memory_limit_is_scanned_worked_and_archived_over_ssh(tmp_path, db_path, ssh_hosts):
    import subprocess
    import sys

    clip = big_video(tmp_path / "inbox" / "ann" / "long.mp4", MEMORY_LIMIT + GiB // 4)
    # the limit bites: a process that held the file in memory could not run under it
    whole = subprocess.run(
        [sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); open({str(clip)!r}, 'rb').read()"],
        capture_output=True, text=True,
    )
    assert whole.returncode != 0 and "MemoryError" in whole.stderr
    for step in (("scan", tmp_path / "inbox"), ("enqueue",), ("work", "-j1")):
        r = run_limited(tmp_path, *step)
        assert r.returncode == 0, (step, r.stderr)
    [row] = files(db_path).values()
    assert (row["kind"], row["state"], row["size"]) == ("video", "processed", clip.stat().st_size)
    assert {n for (n,) in q(db_path, "SELECT name FROM artifacts")} == {"thumb", "web", "preview"}

    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"  # the sshd runs on this machine: what lands can be read back
    remote.mkdir()
    url = f"ssh://{host.alias}{remote}"
    r = run_limited(tmp_path, "archive", "--to", url, "--ssh-config", host.ssh_config)
    assert r.returncode == 0, r.stderr
    [(path, digest)] = q(db_path, "SELECT path, sha256 FROM copies WHERE destination = ? AND artifact_id IS NULL", url)
    assert digest == row["sha256"] and sha256_of(remote / path) == row["sha256"]
    assert files(db_path)["long.mp4"]["state"] == "archived"


# ---------------------------------------------------------------- the preview plays in a browser

PLAYER = """<!doctype html><meta charset="utf-8"><title>play</title>
<pre id="result">pending</pre>
{videos}
<script>
const videos = [...document.querySelectorAll("video")];
const report = () => {{
  document.getElementById("result").textContent = JSON.stringify(videos.map(v => ({{
    src: v.getAttribute("src"), readyState: v.readyState, duration: v.duration,
    width: v.videoWidth, height: v.videoHeight, error: v.error ? v.error.code : null,
  }})));
}};
let left = videos.length;
for (const v of videos) {{
  const done = () => {{ v.onloadeddata = v.onerror = null; if (--left === 0) report(); }};
  if (v.readyState >= 2) done(); else {{ v.onloadeddata = done; v.onerror = done; }}
}}
</script>
"""


def test_the_previews_play_in_headless_chromium(tmp_path, serve):
    import html
    import re

    from imgq.imaging import video_encode as v
    from test_gallery import _chromium_exe, chromium

    _chromium_exe()
    www = tmp_path / "www"
    www.mkdir()
    clip = clips.make_clip(tmp_path / "in.avi", width=320, height=240, frames=75, fps=25)  # 3 s
    fd = os.open(clip, os.O_RDONLY)
    try:
        made = {"vp8": v.encode_video(fd, "in.avi", "video:codec=vp8", lambda ext: www / f"vp8.{ext}")}
        if clips.have_ffmpeg():
            phone = clips.make_clip_ffmpeg(tmp_path / "phone.mp4", width=320, height=240, seconds=3, rotate=90)
            pfd = os.open(phone, os.O_RDONLY)
            try:
                made["h264"] = v.encode_video(pfd, "phone.mp4", "preview", lambda ext: www / f"h264.{ext}")
            finally:
                os.close(pfd)
    finally:
        os.close(fd)
    tags = "\n".join(f'<video src="{name}.{s.ext}" preload="auto" muted></video>' for name, s in made.items())
    (www / "play.html").write_text(PLAYER.format(videos=tags))
    dom = chromium("--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=10000", "--dump-dom", serve(www) + "play.html", timeout=60).stdout
    m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert m and m.group(1) != "pending", dom[:2000]
    played = {Path(p["src"]).stem: p for p in json.loads(html.unescape(m.group(1)))}
    assert set(played) == set(made)
    for name, p in played.items():
        assert p["error"] is None and p["readyState"] >= 2, p
        assert p["duration"] == pytest.approx(3.0, abs=0.1), p
        assert (p["width"], p["height"]) == (made[name].width, made[name].height), p


# ---------------------------------------------------------------- chunks across workers


def stream_facts(path) -> tuple[int, int, str, list[str]]:
    """(frames decoded, duration in the stream's time base, that time base, stream kinds)."""
    import subprocess

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-print_format", "json", "-show_streams", str(path)], capture_output=True, check=True,
    ).stdout
    streams = json.loads(out)["streams"]
    [v] = [s for s in streams if s["codec_type"] == "video"]
    return int(v["nb_read_frames"]), int(v["duration_ts"]), v["time_base"], [s["codec_type"] for s in streams]


@needs_ffmpeg
@pytest.mark.parametrize("chain", ["preview", "video:size=320x240,fps=0,start=1,end=6.5|contrast=1.3"])
def test_a_long_video_split_into_chunks_joins_to_the_frames_and_duration_of_one_pass(tmp_path, run_imgq, chain):
    inbox = tmp_path / "inbox"
    clips.make_clip_ffmpeg(inbox / "ann" / "long.mp4", width=480, height=360, seconds=7, fps=50)
    old = time.time() - 120
    os.utime(inbox / "ann" / "long.mp4", (old, old))
    (tmp_path / "imgq.toml").write_text(f'[recipes.clip]\nthumb = "thumb"\nmovie = "{chain}"\n')
    made = {}
    for db, split in (("one.db", []), ("split.db", ["--split", "--split-seconds", "5", "--stripes", "3"])):
        assert run_imgq("--db", db, "scan", inbox).returncode == 0
        enq = run_imgq("--db", db, "enqueue", "--recipe", "clip", *split)
        assert enq.returncode == 0, enq.stderr
        work = run_imgq("--db", db, "work", "-j2", timeout=300)
        assert work.returncode == 0, work.stderr
        stages = sorted(s for (s,) in q(tmp_path / db, "SELECT stage FROM jobs"))
        assert stages == ([""] if not split else ["join:3", "stripe:0/3", "stripe:1/3", "stripe:2/3"])
        arts = {n: tmp_path / f"{Path(db).stem}-store" / p for n, p in q(tmp_path / db, "SELECT name, path FROM artifacts")}
        assert set(arts) == {"thumb", "movie"}
        made[db] = arts
        if split:  # the chunks' parts are gone once the join is recorded
            assert not list((tmp_path / "split-store").rglob("*.vpart"))
    one, joined = stream_facts(made["one.db"]["movie"]), stream_facts(made["split.db"]["movie"])
    assert one == joined and one[0] > 200, (one, joined)
    assert made["one.db"]["thumb"].read_bytes() == made["split.db"]["thumb"].read_bytes()  # the same poster frame
    [(result,)] = q(tmp_path / "split.db", "SELECT result FROM jobs WHERE stage LIKE 'join%'")
    assert "joined from chunks" in json.loads(result)["movie"]["encoder"]


@needs_ffmpeg
def test_imgq_run_split_chunks_long_videos_and_archives_the_joined_preview(tmp_path, run_imgq, db_path):
    # the whole job in one command splits as `imgq enqueue --split` does (split_seconds
    # and split_stripes from imgq.toml), so a cron or --watch service chunks long videos too
    inbox = tmp_path / "inbox"
    clips.make_clip_ffmpeg(inbox / "ann" / "long.mp4", width=320, height=240, seconds=4, fps=25)
    old = time.time() - 120
    os.utime(inbox / "ann" / "long.mp4", (old, old))
    (tmp_path / "imgq.toml").write_text('split_seconds = 2\nsplit_stripes = 2\n[recipes.clip]\nmovie = "preview"\n')
    (tmp_path / "A").mkdir()
    r = run_imgq("run", "--split", "--recipe", "clip", "-j2", "--to", tmp_path / "A", inbox, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(s for (s,) in q(db_path, "SELECT stage FROM jobs")) == ["join:2", "stripe:0/2", "stripe:1/2"]
    assert q(db_path, "SELECT state FROM files") == [("collected",)]
    [(result,)] = q(db_path, "SELECT result FROM jobs WHERE stage LIKE 'join%'")
    assert "joined from chunks" in json.loads(result)["movie"]["encoder"]
    assert [p.suffix for p in (tmp_path / "A").rglob("*.mp4")].count(".mp4") == 2  # the original and its preview


@needs_ffmpeg
def test_a_worker_killed_mid_chunk_leaves_the_chunk_to_another_and_the_join_is_still_exact(tmp_path, run_imgq, db_path):
    import signal
    import subprocess
    import sys

    from conftest import imgq_env, wait_for
    from imgq.imaging import video_encode as v

    inbox = tmp_path / "inbox"
    clip = clips.make_clip_ffmpeg(inbox / "ann" / "long.mp4", width=640, height=480, seconds=16, fps=30)
    old = time.time() - 120
    os.utime(clip, (old, old))
    assert run_imgq("scan", inbox).returncode == 0
    assert run_imgq("enqueue", "--split", "--split-seconds", "4", "--stripes", "2").returncode == 0
    store = tmp_path / "imgq-store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgq", "work", "-j1", "--lease", "2", "--batch", "1"], cwd=tmp_path, env=imgq_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        owner, job = wait_for(lambda: q(db_path, "SELECT lease_owner, id FROM jobs WHERE state = 'leased' AND stage LIKE 'stripe:%'"))[0]
        # killed while its encoder writes the chunk (the part is growing in its scratch folder)
        wait_for(lambda: any(p.stat().st_size > 0 for p in store.glob(".imgq-scratch.*/*.mp4")), step=0.005)
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert q(db_path, "SELECT state FROM jobs WHERE id = ?", job) == [("leased",)]
    done = run_imgq("work", "-j2", "--lease", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    assert {s for (s,) in q(db_path, "SELECT state FROM jobs")} == {"done"}
    reclaimed = q(db_path, "SELECT detail FROM events WHERE job_id = ? AND to_state = 'leased' ORDER BY id", job)
    assert len(reclaimed) == 2 and "expired" in reclaimed[1][0]
    [(path,)] = q(db_path, "SELECT path FROM artifacts WHERE name = 'preview'")
    fd = os.open(clip, os.O_RDONLY)
    try:
        v.encode_video(fd, "long.mp4", "preview", lambda ext: tmp_path / f"one.{ext}")
    finally:
        os.close(fd)
    assert stream_facts(store / path) == stream_facts(tmp_path / "one.mp4")
    leftovers = [*store.rglob("*.vpart"), *store.rglob("*.imgq-staged"), *store.rglob("*.imgq-tmp*"), *store.rglob(".imgq-scratch.*")]
    assert not leftovers, leftovers  # the killed worker's encoder scratch folder was swept too


def test_without_ffmpeg_chunks_are_mjpg_parts_joined_into_the_frames_of_one_pass(tmp_path):
    from imgq.imaging import video_chunks as v, video_encode

    clip = clips.make_clip(tmp_path / "in.avi", width=320, height=240, frames=125, fps=50)  # capped at 30 fps
    fd = os.open(clip, os.O_RDONLY)
    try:
        one = video_encode.encode_video(fd, "in.avi", "preview", lambda ext: tmp_path / f"one.{ext}", ffmpeg=None)
        parts = []
        for i in range(3):
            made = v.encode_chunks(fd, "in.avi", {"preview": "preview"}, i, 3, lambda art, i=i: tmp_path / f"part{i}.vpart", ffmpeg=None)
            assert made["preview"]["encoder"] == "opencv mjpg avi"
            parts.append(tmp_path / f"part{i}.vpart")
        joined = v.join_chunks(fd, "in.avi", "preview", parts, lambda ext: tmp_path / f"joined.{ext}", ffmpeg=None)
    finally:
        os.close(fd)
    assert (joined.frames, joined.duration, joined.ext, joined.encoder) == (one.frames, one.duration, "webm", "opencv vp8 webm, joined from chunks")
    assert one.frames == 75  # 125 frames at 50 fps, 2.5 s, thinned to 30 fps
    n1, fps1, size1, _ = read_video(tmp_path / "one.webm")
    n2, fps2, size2, _ = read_video(tmp_path / "joined.webm")
    assert (n1, fps1, size1) == (n2, fps2, size2) == (75, 30.0, (320, 240))


def test_work_refuses_a_video_changed_after_scan_naming_it(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    clip = clips.make_clip(inbox / "ann" / "walk.avi", frames=20)
    old = time.time() - 120
    os.utime(clip, (old, old))
    assert run_imgq("scan", inbox).returncode == 0
    assert run_imgq("enqueue").returncode == 0
    data = bytearray(clip.read_bytes())
    data[-100] ^= 0xFF  # same size, other content: only the sha256 tells
    clip.write_bytes(bytes(data))
    work = run_imgq("work", "-j1")
    assert work.returncode == 1
    [(state, error, kind)] = q(db_path, "SELECT state, error, error_kind FROM jobs")
    assert (state, kind) == ("failed", "permanent") and "walk.avi" in error and "changed in the inbox" in error, error
    assert q(db_path, "SELECT count(*) FROM artifacts") == [(0,)]


@needs_ffmpeg
def test_several_video_chains_come_from_one_decode_each_with_its_size_rate_range_and_encoder(tmp_path):
    from imgq.imaging import video_encode as v

    clip = clips.make_clip_ffmpeg(tmp_path / "in.mp4", width=640, height=360, seconds=4, fps=25)
    chains = {
        "preview": "preview",
        "small": "video:size=160x160,fps=10,start=1,end=3,codec=vp8|gray",
        "hd": "video:size=1280x720,kbps=500",
    }
    fd = os.open(clip, os.O_RDONLY)
    try:
        made = v.encode_videos(fd, "in.mp4", chains, lambda art, ext: tmp_path / f"{art}.{ext}")
    finally:
        os.close(fd)
    assert {a: (s.ext, s.width, s.height, s.frames, s.duration) for a, s in made.items()} == {
        "preview": ("mp4", 640, 360, 100, 4.0),
        "small": ("webm", 160, 90, 20, 2.0),  # 2 s at 10 fps
        "hd": ("mp4", 640, 360, 100, 4.0),  # never enlarged
    }
    assert made["small"].encoder == "opencv vp8 webm" and made["preview"].encoder == "ffmpeg libx264/aac mp4"
    n, fps, size, frames = read_video(tmp_path / "small.webm")
    assert (n, fps, size) == (20, 10.0, (160, 90))
    b, g, r = (frames[5][..., i].astype(int) for i in range(3))
    assert abs(b - g).max() <= 12 and abs(g - r).max() <= 12  # gray ran on every frame
    for art in ("preview", "hd"):
        assert stream_facts(tmp_path / f"{art}.mp4")[0] == 100


def test_a_video_through_work_hosts_runs_on_the_host_and_gives_the_outputs_local_work_gives(tmp_path, run_imgq, photo, ssh_hosts):
    """`imgq work --hosts` with a video in the queue: its jobs run on the host (the
    original streamed down, the preview and stills streamed back and checked as what
    they are: a video, JPEGs), and every artifact is byte for byte what local work makes.
    (Until the fleet streamed and checked video, a video's jobs ran on the coordinator.)"""
    import sys

    [host] = ssh_hosts(1)
    inbox = tmp_path / "inbox"
    photo(inbox / "ann" / "IMG_1.jpg")
    if clips.have_ffmpeg():  # H.264 with audio: the preview is ffmpeg's, the audio goes along
        clips.make_clip_ffmpeg(inbox / "ann" / "walk.mp4", width=320, height=240, seconds=2)
    else:
        clips.make_clip(inbox / "ann" / "walk.avi", width=320, height=240, frames=30, fps=15)
    old = time.time() - 120
    for p in inbox.rglob("*.*"):
        os.utime(p, (old, old))
    remote = str(Path(sys.executable).parent / "imgq")
    hosts = ["--hosts", f"{host.alias}/1", "--ssh-config", host.ssh_config, "--remote-imgq", remote]
    made = {}
    for db, how in (("local.db", ["-j1"]), ("hosts.db", hosts), ("shared.db", [*hosts, "--shared-root", inbox])):
        assert run_imgq("--db", db, "scan", inbox).returncode == 0
        assert run_imgq("--db", db, "enqueue").returncode == 0
        work = run_imgq("--db", db, "work", "--drain", *how, timeout=300)
        assert work.returncode == 0, work.stderr
        assert "benched" not in work.stderr
        assert {r["state"] for r in files(tmp_path / db).values()} == {"processed"}
        store = tmp_path / f"{Path(db).stem}-store"
        rows = q(tmp_path / db, "SELECT f.kind, a.name, a.path, a.sha256, a.bytes, a.width, a.height FROM artifacts a JOIN files f ON f.id = a.file_id")
        made[db] = {(kind, name): (path.rpartition(".")[2], digest, size, w, h) for kind, name, path, digest, size, w, h in rows}
        for kind, name, path, digest, *_ in rows:
            assert sha256_of(store / path) == digest
        made[db + " results"] = {r for (r,) in q(tmp_path / db, "SELECT json_extract(result, '$.preview') FROM jobs j JOIN files f ON f.id = j.file_id WHERE f.kind = 'video'")}
    assert set(made["hosts.db"]) == {("photo", "thumb"), ("photo", "web"), ("video", "thumb"), ("video", "web"), ("video", "preview")}
    for db in ("hosts.db", "shared.db"):
        assert made[db] == made["local.db"] and made[db + " results"] == made["local.db results"], db
        # the video's job ran on the host, not here
        ran = q(tmp_path / db, "SELECT f.kind, e.host FROM events e JOIN files f ON f.id = e.file_id WHERE e.entity = 'job' AND e.to_state = 'done'")
        assert {h for k, h in ran if k == "video"} == {host.alias}, ran
        assert not q(tmp_path / db, "SELECT name FROM hosts WHERE state = 'benched'")
    assert made["hosts.db"][("video", "preview")][0] in ("mp4", "webm")
    # staged, the video went down the wire; with --shared-root the host read it in place
    sent = {db: json.loads(c)["bytes_out"] for db in ("hosts.db", "shared.db") for (c,) in q(tmp_path / db, "SELECT counts FROM runs WHERE command = 'work'")}
    video = next(p for p in inbox.rglob("walk.*"))
    assert sent["hosts.db"] - sent["shared.db"] >= video.stat().st_size, sent


# ---------------------------------------------------------------- the gallery plays them

# Frames a gallery page (which has no script of its own) and plays its <video> muted.
GALLERY_PLAYER = """<!doctype html><meta charset="utf-8"><title>play</title>
<pre id="result">pending</pre>
<iframe src="{page}" width="1000" height="900"></iframe>
<script>
window.addEventListener("load", () => {{
  const d = document.querySelector("iframe").contentDocument;
  const v = d.querySelector("video");
  const report = () => {{
    document.getElementById("result").textContent = JSON.stringify(v ? {{
      src: v.currentSrc, readyState: v.readyState, duration: v.duration, width: v.videoWidth,
      error: v.error ? v.error.code : null, scripts: d.querySelectorAll("script").length,
    }} : null);
  }};
  if (!v) return report();
  v.muted = true;
  if (v.readyState >= 2) return report();
  v.onloadeddata = v.onerror = report;
  v.querySelector("source").onerror = report;
  v.play().catch(() => {{}});
}});
</script>
"""


def test_a_published_video_plays_on_its_page_and_is_marked_on_the_grid(tmp_path, run_imgq, db_path, photo, serve):
    import html
    import re
    import urllib.parse

    from imgq import publish
    from test_gallery import _chromium_exe, chromium

    _chromium_exe()
    inbox = tmp_path / "inbox"
    photo(inbox / "ann" / "IMG_1.jpg")
    if clips.have_ffmpeg():
        clips.make_clip_ffmpeg(inbox / "ann" / "walk <&> \"1\".mp4", width=320, height=240, seconds=3)
    else:
        clips.make_clip(inbox / "ann" / "walk <&> \"1\".avi", width=320, height=240, frames=75, fps=25)
    old = time.time() - 120
    for p in inbox.rglob("*.*"):
        os.utime(p, (old, old))
    assert run_imgq("scan", inbox).returncode == 0 and run_imgq("enqueue").returncode == 0
    assert run_imgq("work", "-j2", timeout=300).returncode == 0
    www = tmp_path / "www"
    (www / "archive").mkdir(parents=True)
    assert run_imgq("archive", "--to", www / "archive").returncode == 0  # beside the gallery: the original is linked
    r = run_imgq("publish", www / "g")
    assert r.returncode == 0, r.stderr
    [(vid, encoder)] = q(db_path, "SELECT f.id, json_extract(j.result, '$.preview.encoder') FROM files f JOIN jobs j ON j.file_id = f.id WHERE f.kind = 'video' AND j.result LIKE '%preview%'")
    kind = "video/mp4" if "mp4" in encoder else "video/webm"
    page = f"photo/{publish.slug(vid)}.html"
    text = (www / "g" / page).read_text()
    tag = re.search(r'<video controls preload="metadata" poster="\.\./img/[^"]+\.web-[0-9a-f]+\.jpg"[^>]*><source src="(\.\./img/[^"]+)" type="([^"]+)">', text)
    assert tag and tag.group(2) == kind, text
    assert "walk &lt;&amp;&gt; &quot;1&quot;" in text and "walk <&>" not in text  # the name stays text
    assert "Running time</dt><dd>0:03" in text and "Download the original video" in text
    original = re.search(r'<a class="download" href="([^"]+)" download>', text).group(1)
    assert (www / "g" / "photo" / urllib.parse.unquote(html.unescape(original))).resolve().read_bytes() == next(p for p in inbox.rglob("walk*")).read_bytes()
    day = next((www / "g" / "date").glob("*.html")).read_text()
    assert day.count('<span class="badge" aria-hidden="true">▶ 0:03</span>') == 1  # the video's tile, not the photo's

    (www / "play.html").write_text(GALLERY_PLAYER.format(page="g/" + page))
    dom = chromium("--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=10000", "--dump-dom", serve(www) + "play.html", timeout=60).stdout
    m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert m and m.group(1) != "pending", dom[:2000]
    played = json.loads(html.unescape(m.group(1)))
    assert played["error"] is None and played["readyState"] >= 2 and played["scripts"] == 0, played
    assert played["duration"] == pytest.approx(3.0, abs=0.1) and played["width"] > 0, played
    assert played["src"].endswith(html.unescape(tag.group(1))[2:]), played
