"""bin/bench split: one 100-megapixel image through a neighbourhood operation, whole on
one worker against split into stripe jobs on two workers, in one run.

Each configuration starts from a fresh database: `imgq scan | imgq enqueue [--split
--stripes N] --op CHAIN -` then `imgq work -j W --drain`, timed around `work` (scan and
enqueue take milliseconds). The VmHWM (peak resident set) of every worker process is
polled from /proc while it runs. The joined output is compared with the whole-image
output pixel for pixel.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

SIZE = (12288, 8192)  # 100.7 MP


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["PIL", "numpy", "imgq.samples"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--split-op", default="bilateral", metavar="CHAIN", help="operation chain for the split part (default: bilateral)")


def _photo(work: Path) -> Path:
    from datetime import datetime

    from imgq import samples

    inbox = work / "split-photo-v1" / "inbox"
    path = inbox / "survey" / "orthophoto_100MP.jpg"
    if not path.is_file():
        samples.make_photo(path, width=SIZE[0], height=SIZE[1], seed=4242, quality=90, taken=datetime(2024, 5, 17, 12, 0))
        past = time.time() - 3600
        os.utime(path, (past, past))
    return inbox


def _run(scratch: Path, inbox: Path, chain: str, workers: int, stripes: int | None) -> dict:
    from bench_util import IMGQ, children_of, imgq_env, proc_status_kb

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    db = scratch / "imgq.db"
    split = f"--split --stripes {stripes} " if stripes else ""
    cmd = f'"$1" scan --db "$2" "$3" | "$1" enqueue --db "$2" {split}--op "$4" -'
    p = subprocess.run(["bash", "-c", cmd, "bash", IMGQ, str(db), str(inbox), chain], cwd=scratch, env=imgq_env(), capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"scan | enqueue failed: {p.stderr[-500:]}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([IMGQ, "work", "--db", str(db), "-j", str(workers), "--drain"], cwd=scratch, env=imgq_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for child in children_of(proc.pid):
            kb = proc_status_kb(child, "VmHWM")
            if kb:
                peaks[child] = max(peaks.get(child, 0), kb)
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"imgq work exited {proc.returncode}: {err[-500:]}")
    import sqlite3

    with sqlite3.connect(db) as c:
        [(path,)] = c.execute("SELECT path FROM artifacts").fetchall()
        jobs = c.execute("SELECT count(*) FROM jobs").fetchone()[0]
    out = scratch / "imgq-store" / path
    return {"workers": workers, "stripes": stripes, "jobs": jobs, "wall": wall, "output": str(out),
            "worker_peak_mb": sorted(round(kb / 1024) for kb in peaks.values())}


def run(args, ctx) -> dict:
    import numpy as np
    from PIL import Image

    from bench_util import median, say

    Image.MAX_IMAGE_PIXELS = None  # the bench's own check reads the 100 MP outputs

    work = Path(ctx["work"])
    say(f"split: preparing a {SIZE[0]}x{SIZE[1]} JPEG (once)...")
    inbox = _photo(work)
    configs = [("whole, 1 worker", 1, None), ("split in 2 stripes, 2 workers", 2, 2), ("split in 4 stripes, 2 workers", 2, 4)]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    identical = True
    for r in range(args.repeat):
        outputs = []
        for name, workers, stripes in configs:
            say(f"split: {name} ({args.split_op}), run {r + 1}/{args.repeat}...")
            res = _run(work / f"split-run-{workers}-{stripes}", inbox, args.split_op, workers, stripes)
            runs[name].append(res)
            with Image.open(res["output"]) as im:
                outputs.append(np.asarray(im))
        identical &= all(np.array_equal(outputs[0], o) for o in outputs[1:])
        del outputs
    whole = median([x["wall"] for x in runs[configs[0][0]]])
    rows = []
    for name, workers, stripes in configs:
        wall = median([x["wall"] for x in runs[name]])
        rows.append({"config": name, "workers": workers, "stripes": stripes, "wall": wall, "speedup": whole / wall if wall else None,
                     "jobs": runs[name][0]["jobs"], "worker_peak_mb": runs[name][-1]["worker_peak_mb"]})
    best = max(rows[1:], key=lambda x: x["speedup"] or 0)
    for name, _, _ in configs:
        for x in runs[name]:
            shutil.rmtree(Path(x["output"]).parents[2], ignore_errors=True)
    return {
        "image": {"size": list(SIZE), "megapixels": SIZE[0] * SIZE[1] / 1e6},
        "chain": args.split_op,
        "rows": rows,
        "pixel_identical": identical,
        "targets": [{"part": "split", "name": f"{best['config']} vs whole on 1 worker ({args.split_op}, 100 MP)", "value": best["speedup"], "target": 1.6, "unit": "x"}],
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    out = [f"split: {res['image']['megapixels']:.0f} MP JPEG, --op '{res['chain']}' (full-size output), whole vs stripe jobs; "
           f"joined output pixel-identical to the whole: {'yes' if res['pixel_identical'] else 'NO'}"]
    rows = [[r["config"], str(r["jobs"]), fmt(r["wall"]), fmt(r["speedup"], 2) + "x", ", ".join(str(m) for m in r["worker_peak_mb"])] for r in res["rows"]]
    out.append("")
    out.append(table(["configuration", "jobs", "wall s", "speed-up", "peak MB per worker"], rows, right={1, 2, 3}))
    return "\n".join(out)
