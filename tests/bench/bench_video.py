"""bin/bench video: clips through imgq against GNU parallel running ffmpeg, in one run,
and one long clip in chunk jobs on two workers against the same clip unchunked.

The clips are made once (cached under --work) by ffmpeg's lavfi ``testsrc2`` with a sine
tone: 1080p, 30 fps, H.264/AAC, as a phone would record. Both methods make, per clip, a
poster still fitting 640x480 (JPEG) and a preview fitting 640x480 at most 30 fps, H.264
veryfast crf 28, yuv420p, High profile, AAC 128 kbit/s, moov in front (faststart) for the
web: imgq's ``preview`` settings; imgq reads the clip once for both (a recipe ``web`` +
``preview``) and picks the poster among eight frames, ffmpeg runs twice (the middle
frame, then the preview), each with its own choice of threads. imgq is timed around ``scan | enqueue;
work -j2 --drain`` from a fresh database; ``parallel -j2`` around its whole run. The
chunked figure is ``enqueue --split --stripes 2`` against plain ``enqueue``, both timed
around ``work -j2 --drain``. Every output's duration is checked with ffprobe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

RECIPE = '[recipes.bench]\nweb = "web"\npreview = "preview"\n'
FFMPEG_JOB = (
    'ffmpeg -v error -nostdin -y -ss {mid} -i {clip} -frames:v 1 -vf scale=640:480:force_original_aspect_ratio=decrease -q:v 4 {out}.poster.jpg'
    ' && ffmpeg -v error -nostdin -y -i {clip} -map 0:v -map 0:a? -vf "scale=640:480:force_original_aspect_ratio=decrease:force_divisible_by=2,fps=30"'
    " -c:v libx264 -preset veryfast -pix_fmt yuv420p -profile:v high -crf 28 -c:a aac -b:a 128k -movflags +faststart {out}.preview.mp4"
)


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["imgq.imaging.video_encode"], "programs": ["ffmpeg", "parallel"], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--video-clips", type=int, default=10, metavar="N", help="video: clips in the throughput comparison (default 10)")
    ap.add_argument("--video-seconds", type=float, default=30, metavar="S", help="video: seconds each clip runs (default 30)")
    ap.add_argument("--video-long-seconds", type=float, default=120, metavar="S", help="video: seconds of the long clip for chunks vs whole (default 120)")


def _clip(path: Path, seconds: float, seed: int) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-" + path.name)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds:g}",
             "-f", "lavfi", "-i", f"sine=frequency={300 + 40 * seed}:sample_rate=48000:duration={seconds:g}",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
             "-shortest", "-f", "mp4", str(tmp)],
            check=True,
        )
        past = time.time() - 3600  # older than scan's settle time
        os.utime(tmp, (past, past))
        tmp.rename(path)
    return path


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["format"]["duration"])


def _imgq(scratch: Path, inbox: Path, *, split: bool = False) -> dict:
    from bench_util import IMGQ, CpuMeter, imgq_env

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "imgq.toml").write_text(RECIPE)
    env = imgq_env()
    flags = "--split --split-seconds 1 --stripes 2 " if split else ""
    t0, whole = time.perf_counter(), CpuMeter()
    p = subprocess.run(["bash", "-c", f'"$1" scan "$2" | "$1" enqueue {flags}--recipe bench -', "bash", IMGQ, str(inbox)],
                       cwd=scratch, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"imgq scan | enqueue failed: {p.stderr[-500:]}")
    t1, working = time.perf_counter(), CpuMeter()
    w = subprocess.run([IMGQ, "work", "-j2", "--drain"], cwd=scratch, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    t2, work_cpu, all_cpu = time.perf_counter(), working.stop(), whole.stop()
    if w.returncode:
        raise RuntimeError(f"imgq work failed: {w.stderr[-500:]}")
    import sqlite3

    with sqlite3.connect(scratch / "imgq.db") as c:
        arts = c.execute("SELECT name, path FROM artifacts").fetchall()
        jobs = c.execute("SELECT count(*) FROM jobs").fetchone()[0]
    previews = [scratch / "imgq-store" / p for n, p in arts if n == "preview"]
    stills = [p for n, p in arts if n == "web"]
    return {"wall": t2 - t0, "work_wall": t2 - t1, "jobs": jobs, "previews": previews, "stills": len(stills),
            "cpu": all_cpu["cpu_children"], "work_cpu": work_cpu["cpu_children"], "others_share": all_cpu.get("others_share"),
            "work_others_share": work_cpu.get("others_share")}


def _parallel(scratch: Path, clips: list[Path], seconds: float) -> dict:
    from bench_util import CpuMeter

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    job = FFMPEG_JOB.format(mid=f"{seconds / 2:g}", clip="{}", out=f"{scratch}/{{/.}}")
    t0, meter = time.perf_counter(), CpuMeter()
    p = subprocess.run(["parallel", "-j2", "--halt", "now,fail=1", job, ":::", *map(str, clips)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, meter.stop()
    if p.returncode:
        raise RuntimeError(f"parallel ffmpeg failed: {p.stderr[-500:]}")
    return {"wall": wall, "previews": sorted(scratch.glob("*.preview.mp4")), "stills": len(list(scratch.glob("*.poster.jpg"))),
            "cpu": cpu["cpu_children"], "others_share": cpu.get("others_share")}


def _problems(res: dict, count: int, seconds: float) -> list[str]:
    out = []
    if len(res["previews"]) != count or res["stills"] != count:
        out.append(f"{len(res['previews'])} previews and {res['stills']} posters for {count} clips")
    for p in res["previews"]:
        d = _duration(p)
        if abs(d - seconds) > 0.2:
            out.append(f"{p.name}: {d:.2f} s, not {seconds:g}")
    return out


def run(args, ctx) -> dict:
    from bench_util import load_average, median, say

    if not shutil.which("ffmpeg") or not shutil.which("parallel"):
        raise RuntimeError("part video needs ffmpeg and parallel (apt-get install ffmpeg parallel)")
    n, secs, long_secs = args.video_clips, args.video_seconds, args.video_long_seconds
    work = Path(ctx["work"]) / "video-v1"
    inbox = work / f"clips-{secs:g}s" / "inbox"
    say(f"video: making {n} 1080p clips of {secs:g} s (once)...")
    clips = [_clip(inbox / "crew" / f"clip{i:02d}.mp4", secs, i) for i in range(n)]
    for extra in sorted((inbox / "crew").glob("clip*.mp4"))[n:]:
        extra.unlink()  # an earlier run's larger set
    long_inbox = work / f"long-{long_secs:g}s" / "inbox"
    say(f"video: making one 1080p clip of {long_secs:g} s (once)...")
    _clip(long_inbox / "crew" / "long.mp4", long_secs, 99)

    load = [load_average()]
    runs: dict[str, list[dict]] = {"imgq": [], "parallel": [], "whole": [], "chunked": []}
    problems: dict[str, list[str]] = {"imgq": [], "parallel": [], "whole": [], "chunked": []}
    for r in range(args.repeat):
        say(f"video: imgq scan | enqueue; work -j2 on {n} clips, run {r + 1}/{args.repeat}...")
        res = _imgq(work / "run-imgq", inbox)
        problems["imgq"] += _problems(res, n, secs)
        runs["imgq"].append(res)
        say(f"video: parallel -j2 ffmpeg on {n} clips, run {r + 1}/{args.repeat}...")
        res = _parallel(work / "run-parallel", clips, secs)
        problems["parallel"] += _problems(res, n, secs)
        runs["parallel"].append(res)
        for name, split in (("whole", False), ("chunked", True)):
            say(f"video: the {long_secs:g} s clip {name} on 2 workers, run {r + 1}/{args.repeat}...")
            res = _imgq(work / f"run-{name}", long_inbox, split=split)
            problems[name] += _problems(res, 1, long_secs)
            runs[name].append(res)
        load.append(load_average())
    total = n * secs
    imgq_wall = median([x["wall"] for x in runs["imgq"]])
    par_wall = median([x["wall"] for x in runs["parallel"]])
    whole = median([x["work_wall"] for x in runs["whole"]])
    chunked = median([x["work_wall"] for x in runs["chunked"]])
    def cpu(name: str, key: str = "cpu") -> float:
        return median([x[key] for x in runs[name]])

    def others(name: str, key: str = "others_share") -> float | None:
        shares = [x[key] for x in runs[name] if x.get(key) is not None]
        return max(shares) if shares else None

    methods = {
        "imgq": {"wall": imgq_wall, "work_wall": median([x["work_wall"] for x in runs["imgq"]]), "problems": problems["imgq"],
                 "cpu": cpu("imgq"), "others_share": others("imgq")},
        "parallel -j2 ffmpeg": {"wall": par_wall, "problems": problems["parallel"], "cpu": cpu("parallel"), "others_share": others("parallel")},
        "long clip, whole (1 job)": {"wall": whole, "jobs": runs["whole"][0]["jobs"], "problems": problems["whole"],
                                     "cpu": cpu("whole", "work_cpu"), "others_share": others("whole", "work_others_share")},
        "long clip, 2 chunks + join": {"wall": chunked, "jobs": runs["chunked"][0]["jobs"], "problems": problems["chunked"],
                                       "cpu": cpu("chunked", "work_cpu"), "others_share": others("chunked", "work_others_share")},
    }
    for name, m in methods.items():
        seconds = long_secs if name.startswith("long") else total
        m["clips_per_minute"] = None if name.startswith("long") else 60 * n / m["wall"]
        m["realtime_per_core"] = seconds / m["wall"] / 2  # seconds of video per second of wall time, per core (2 used)
    ratio = par_wall / imgq_wall
    speedup = whole / chunked
    return {
        "clips": n, "clip_seconds": secs, "long_seconds": long_secs, "frame": "1920x1080 30 fps H.264/AAC",
        "load_average": load, "methods": methods, "ratio": ratio, "chunk_speedup": speedup,
        "cpu_ratio": methods["parallel -j2 ffmpeg"]["cpu"] / methods["imgq"]["cpu"],
        "targets": [
            {"part": "video", "name": f"imgq clips/min vs parallel -j2 ffmpeg ({n} x {secs:g} s 1080p)", "value": ratio, "target": 1.0, "unit": "x"},
            {"part": "video", "name": f"{long_secs:g} s clip in 2 chunks vs whole, 2 workers", "value": speedup, "target": 1.6, "unit": "x"},
        ],
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    out = [f"video: {res['clips']} clips of {res['clip_seconds']:g} s and one of {res['long_seconds']:g} s, {res['frame']}; poster + 640x480 H.264 preview each; "
           f"load average before/after each round: {res['load_average']}"]
    rows = []
    for name, m in res["methods"].items():
        share = m.get("others_share")
        rows.append([name, fmt(m["wall"]), fmt(m.get("clips_per_minute")), fmt(m["realtime_per_core"], 2) + "x", fmt(m.get("cpu")),
                     "-" if share is None else f"{100 * share:.0f}%", "; ".join(m["problems"][:2]) or "ok"])
    out.append("")
    out.append(table(["method", "wall s", "clips/min", "realtime per core", "CPU s", "others' CPU", "outputs"], rows, right={1, 2, 3, 4, 5}))
    out.append("")
    out.append(f"imgq / ffmpeg throughput: {res['ratio']:.2f}x (by CPU seconds: {res['cpu_ratio']:.2f}x); chunks vs whole on 2 workers: "
               f"{res['chunk_speedup']:.2f}x (imgq's work step alone: {fmt(res['methods']['imgq']['work_wall'])} s; long clip: work step only)")
    if any((m.get("others_share") or 0) > 0.1 for m in res["methods"].values()):
        out.append("others' CPU above 10%: walls and their ratios are disturbed; the CPU seconds stay comparable")
    return "\n".join(out)
