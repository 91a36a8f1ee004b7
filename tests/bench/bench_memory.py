"""bin/bench memory: peak memory of an imgq worker rendering 24 MP photos (thumb + web).

Two views, both of the worker, not of the bench:
  1. ``imgq work -j1 --drain`` as a user runs it, on a database holding two 24 MP photos
     (one stored rotated, EXIF orientation 6). The worker process (the child of the
     ``imgq work`` process) is found in /proc and its VmHWM (peak resident set) read every
     few milliseconds until it exits; the parent's too. (Not ``wait4``'s ru_maxrss: Linux
     folds into it the pages the child had between fork and exec, that is the size of
     the bench process itself.) RSS counts pages shared with the parent after the fork.
  2. One fresh child Python per photo that claims the job and calls
     ``imgq.worker.process`` itself, reporting VmHWM before (interpreter + imports) and
     after, so the part due to rendering one photo is visible on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PHOTOS = [  # stored size, EXIF orientation
    ("IMG_24MP.jpg", (6000, 4000), 1),
    ("IMG_24MP_rotated.jpg", (6000, 4000), 6),
]


def _photos(work: Path) -> Path:
    from datetime import datetime

    from imgq import samples

    inbox = work / "memory-photos-v1" / "inbox"
    for i, (name, (w, h), orientation) in enumerate(PHOTOS):
        path = inbox / "alice" / name
        if not path.is_file():
            samples.make_photo(path, width=w, height=h, seed=9100 + i, orientation=orientation, taken=datetime(2024, 5, 17, 9, i))
            past = time.time() - 3600
            os.utime(path, (past, past))
    return inbox


def _prepare(db: Path, inbox: Path) -> None:
    from bench_util import IMGQ, imgq_env

    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.rmtree(db.parent / (db.stem + "-store"), ignore_errors=True)
    cmd = f'"$1" scan --db "$2" "$3" | "$1" enqueue --db "$2" -'
    p = subprocess.run(["bash", "-c", cmd, "bash", IMGQ, str(db), str(inbox)], cwd=db.parent, env=imgq_env(), capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"imgq scan | enqueue failed: {p.stderr[-500:]}")


def measure_work(db: Path) -> dict:
    """Run ``imgq work -j1 --drain``; the VmHWM of its worker process and of itself (polled)."""
    from bench_util import IMGQ, children_of, imgq_env, proc_status_kb

    proc = subprocess.Popen([IMGQ, "work", "--db", str(db), "-j", "1", "--drain"], cwd=db.parent, env=imgq_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, int] = {}
    parent_peak = 0
    while True:
        for child in children_of(proc.pid):
            kb = proc_status_kb(child, "VmHWM")
            if kb:
                peaks[child] = max(peaks.get(child, 0), kb)
        kb = proc_status_kb(proc.pid, "VmHWM")
        if kb:
            parent_peak = max(parent_peak, kb)
        if proc.poll() is not None:
            break
        time.sleep(0.002)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode:
        raise RuntimeError(f"imgq work exited {proc.returncode}: {err[-500:]}")
    worker_kb = max(peaks.values()) if peaks else None
    return {
        "worker_vmhwm_mb": worker_kb / 1024 if worker_kb else None,
        "workers_seen": len(peaks),
        "parent_vmhwm_mb": parent_peak / 1024 if parent_peak else None,
    }


def child_main(argv) -> int:
    """One job processed by ``imgq.worker.process`` in this fresh process; prints JSON."""
    from bench_util import proc_status_kb

    db_path = Path(argv[0])
    from imgq.ledger import queue
    from imgq import work as worker
    from imgq.config import Settings
    from imgq.ledger.database import DB

    settings = Settings(db=db_path)
    db = DB(db_path)
    claims = queue.claim(db, owner="bench-memory", limit=1, lease_seconds=600, now=time.time())
    if not claims:
        print(json.dumps({"error": "no job to claim"}))
        return 1
    before = proc_status_kb(os.getpid(), "VmHWM")
    t0 = time.perf_counter()
    outcome = worker.process(claims[0], settings)
    seconds = time.perf_counter() - t0
    after = proc_status_kb(os.getpid(), "VmHWM")
    queue.settle(db, [outcome], now=time.time(), store_dir=settings.store_dir)
    db.close()
    print(json.dumps({
        "photo": claims[0].path,
        "error": outcome.error,
        "before_mb": before / 1024,
        "after_mb": after / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }))
    return 0


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["PIL", "numpy", "imgq.samples", "imgq.work"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    pass


def run(args, ctx) -> dict:
    from bench_util import PYTHON, median, say

    work = Path(ctx["work"])
    say("memory: preparing two 24 MP photos (once)...")
    inbox = _photos(work)
    scratch = work / "memory-run"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    db = scratch / "imgq.db"

    work_runs = []
    for r in range(args.repeat):
        _prepare(db, inbox)
        say(f"memory: imgq work -j1 --drain, run {r + 1}/{args.repeat}...")
        work_runs.append(measure_work(db))

    per_photo = []
    _prepare(db, inbox)
    for _ in PHOTOS:
        p = subprocess.run([PYTHON, __file__, "child", str(db)], cwd=scratch, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"memory child failed: {p.stderr[-500:]}")
        per_photo.append(json.loads(p.stdout))
    shutil.rmtree(scratch, ignore_errors=True)

    worker_mb = median([w["worker_vmhwm_mb"] for w in work_runs if w["worker_vmhwm_mb"]])
    return {
        "photos": [{"name": n, "stored": list(s), "orientation": o} for n, s, o in PHOTOS],
        "work_runs": work_runs,
        "worker_vmhwm_mb": worker_mb,
        "parent_vmhwm_mb": median([w["parent_vmhwm_mb"] for w in work_runs if w["parent_vmhwm_mb"]]),
        "per_photo": per_photo,
        "targets": [{"part": "memory", "name": "imgq work -j1 worker peak RSS (VmHWM), 24 MP", "value": worker_mb, "target": 300, "unit": "MB", "lower_is_better": True}],
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    out = ["memory: peak resident memory (VmHWM) of imgq's worker, 24 MP JPEGs (6000x4000, one stored rotated) -> thumb + web"]
    rows = [["imgq work -j1 --drain: worker process (2 photos)", fmt(res["worker_vmhwm_mb"]),
             "median of " + ", ".join(fmt(w["worker_vmhwm_mb"]) for w in res["work_runs"])],
            ["imgq work -j1 --drain: its parent process", fmt(res["parent_vmhwm_mb"]), "claims nothing; collects reports"]]
    for p in res["per_photo"]:
        if p.get("error"):
            rows.append([f"worker.process({p['photo']})", "-", f"ERROR {p['error'][:60]}"])
            continue
        rows.append([f"worker.process({p['photo']}) in a fresh python", fmt(p["after_mb"]),
                     f"{fmt(p['before_mb'])} MB before (interpreter + imports), +{fmt(p['after_mb'] - p['before_mb'])} MB rendering, {p['seconds'] * 1000:.0f} ms"])
    out.append("")
    out.append(table(["process", "peak MB", "notes"], rows, right={1}))
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit("usage: bench_memory.py child DB  (bin/bench memory runs it)")
