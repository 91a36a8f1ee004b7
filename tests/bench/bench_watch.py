"""bin/bench watch: how long a camera photo that lands in a watched inbox waits for its
verified copies.

One ``imgq run --watch INBOX --to A --to B --settle S`` runs for the whole part (local
workers: all cores; two local destinations, as in the README's example). Photos are
12 MP camera-like JPEGs with EXIF, each different (so none is a duplicate), landing in
two ways, one at a time:

- ``atomic``: written to a hidden temporary name in the photographer's folder, then
  renamed into place, as sync clients and ``mv`` do; the clock starts at the rename;
- ``slow``: written in place in pieces over 1.5 x S seconds, never pausing as long as S
  (a slow copy, a camera's Wi-Fi upload); the clock starts when the last byte is written.

The clock stops when the watcher prints the photo's id on stdout, which it does once
the original and both artifacts are copied, read back and compared at both destinations
(``archived``); the time until the original has left the inbox (collected, after its
copies verified again) is reported beside it. The target is S + 2 s: the settle time
imgq must wait by design, plus two seconds for everything else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

SIZE = (4000, 3000)  # 12 MP


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["PIL", "imgq.samples"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--watch-settle", type=float, default=2.0, metavar="S", help="settle time of the watcher (default 2)")
    ap.add_argument("--watch-photos", type=int, default=5, metavar="N", help="photos landed in each way (default 5)")


def _photos(work: Path, n: int) -> list[bytes]:
    from datetime import datetime

    from imgq import samples

    folder = work / "watch-photos-v1"
    out = []
    for i in range(n):
        path = folder / f"IMG_{i:04d}.jpg"
        if not path.is_file():
            samples.make_photo(path, width=SIZE[0], height=SIZE[1], seed=7000 + i, taken=datetime(2024, 6, 1, 9, i))
        out.append(path.read_bytes())
    return out


class _Watcher:
    def __init__(self, scratch: Path, settle: float):
        from bench_util import IMGQ, imgq_env

        self.inbox = scratch / "inbox"
        (self.inbox / "alice").mkdir(parents=True)
        dests = [scratch / "A", scratch / "B"]
        for d in dests:
            d.mkdir()
        self.db = scratch / "imgq.db"
        self.proc = subprocess.Popen(
            [IMGQ, "run", "--watch", str(self.inbox), *[a for d in dests for a in ("--to", str(d))], "--settle", str(settle)],
            cwd=scratch, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.ids: dict[str, float] = {}
        self.err: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self):
        for line in self.proc.stdout:
            self.ids[line.strip()] = time.monotonic()

    def _err(self):
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))
            if line.rstrip().endswith(": ready"):
                self.ready.set()

    def idle(self, timeout=60.0) -> None:
        """Wait until the first run has ended and no run is in progress."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(self.db) as c:
                    rows = c.execute("SELECT count(*), count(ended_at) FROM runs WHERE command = 'run'").fetchone()
                if rows[0] and rows[0] == rows[1]:
                    return
            except sqlite3.Error:
                pass
            time.sleep(0.05)
        raise RuntimeError("the watcher did not go idle: " + " | ".join(self.err[-5:]))

    def id_of(self, rel: str) -> str | None:
        try:
            with sqlite3.connect(self.db) as c:
                row = c.execute("SELECT id FROM files WHERE path = ? ORDER BY created_at DESC LIMIT 1", (rel,)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=120)


def _land_atomic(target: Path, data: bytes) -> float:
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, target)
    return time.monotonic()


def _land_slow(target: Path, data: bytes, seconds: float, pieces: int = 12) -> float:
    step = -(-len(data) // pieces)
    with open(target, "wb") as f:
        for i in range(pieces):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            if i < pieces - 1:
                time.sleep(seconds / (pieces - 1))
    return time.monotonic()


def _measure(w: _Watcher, target: Path, landed: float, timeout: float = 120.0) -> dict:
    rel = f"{target.parent.name}/{target.name}"
    deadline = landed + timeout
    fid = None
    while time.monotonic() < deadline:
        fid = fid or w.id_of(rel)
        if fid and fid in w.ids and not target.exists():
            break
        time.sleep(0.01)
    else:
        raise RuntimeError(f"{rel} was not archived and collected within {timeout:.0f} s: " + " | ".join(w.err[-5:]))
    gone = time.monotonic()  # within 10 ms of the collect
    return {"archived": w.ids[fid] - landed, "collected": gone - landed}


def run(args, ctx) -> dict:
    from bench_util import median, say

    settle = args.watch_settle
    n = args.watch_photos
    work = Path(ctx["work"])
    photos = _photos(work, 2 * n)
    scratch = work / "watch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    w = _Watcher(scratch, settle)
    results: dict[str, list[dict]] = {"atomic": [], "slow": []}
    try:
        if not w.ready.wait(60):
            raise RuntimeError("no readiness line: " + " | ".join(w.err[-5:]))
        w.idle()
        for i in range(n):
            for mode in ("atomic", "slow"):
                data = photos[2 * i + (mode == "slow")]
                target = w.inbox / "alice" / f"{mode}_{i:02d}.jpg"
                landed = _land_atomic(target, data) if mode == "atomic" else _land_slow(target, data, 1.5 * settle)
                m = _measure(w, target, landed)
                results[mode].append(m)
                say(f"watch {mode} {i + 1}/{n}: archived {m['archived']:.2f} s, collected {m['collected']:.2f} s after landing")
                w.idle()
                time.sleep(0.5)
    finally:
        code = w.stop()
    out = {"settle": settle, "photos": n, "size": list(SIZE), "exit_code": code, "modes": {}, "targets": []}
    for mode, rows in results.items():
        arch = [r["archived"] for r in rows]
        coll = [r["collected"] for r in rows]
        out["modes"][mode] = {"archived": arch, "collected": coll, "median_archived": median(arch), "median_collected": median(coll)}
        out["targets"].append({
            "part": "watch", "name": f"{mode}: landing -> verified copies, median of {n}",
            "value": round(1000 * median(arch)) if arch else None, "target": round(1000 * (settle + 2)), "unit": "ms", "lower_is_better": True,
        })
    return out


def render(res: dict) -> str:
    from bench_util import table

    s = res["settle"]
    rows = []
    for mode, m in res["modes"].items():
        a, c = m["archived"], m["collected"]
        rows.append([mode, f"{m['median_archived']:.2f}", f"{min(a):.2f}-{max(a):.2f}", f"{m['median_archived'] - s:.2f}",
                     f"{m['median_collected']:.2f}", f"{min(c):.2f}-{max(c):.2f}"])
    head = (f"imgq run --watch, settle S = {s:g} s, {res['photos']} photos of {res['size'][0]}x{res['size'][1]} each way, "
            f"two local destinations; seconds from landing (target: S + 2 = {s + 2:g} s); watcher exit {res['exit_code']} after SIGTERM")
    return head + "\n" + table(["landing", "verified copies (median)", "range", "minus S", "original collected (median)", "range"], rows, right={1, 2, 3, 4, 5})
