"""bin/bench journal: each command on the journal of a site that has run for years.

A database of 100,000 files (``--journal-files``), 97,000 jobs, 190,000 copies and about
780,000 events is built directly in SQLite by tests/journal_sample.py (once, cached in
the work folder), with the files not yet collected put in a real inbox beside it (size
and mtime as recorded, so a scan finds nothing new). Each command is then run as a user
runs it, a whole process each time, ``--repeat`` times; the median wall time is reported
beside ``imgq --version`` (the start-up every command pays) and the targets: every read
command under 0.3 s, a no-op enqueue or scan under 1 s.

Each run works on the same database (the no-op enqueue and scan only add a row to
``runs``; status, report and log only read).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
from pathlib import Path

READ_TARGET = 0.3
NO_OP_TARGET = 1.0


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["journal_sample"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--journal-files", type=int, default=100_000, metavar="N", help="journal: files in the generated journal (default 100000)")


def _build(work: Path, files: int) -> tuple[Path, Path]:
    from bench_util import REPO, say

    sys.path.insert(0, str(REPO / "tests"))
    import journal_sample

    folder = work / f"journal-{files}"
    db, inbox = folder / "imgq.db", folder / "inbox"
    if not (folder / "built").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        say(f"journal: building a journal of {files} files (once)...")
        journal_sample.build(db, files=files, active=max(1, files // 20), inbox=str(inbox))
        for rel, size, mtime_ns in journal_sample.inbox_files(db):
            f = inbox / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"x" * size)
            os.utime(f, ns=(mtime_ns, mtime_ns))
        (folder / "built").write_text("")
    return db, inbox


def run(args, ctx) -> dict:
    from bench_util import IMGQ, imgq_env, median, say, timed_run

    db, inbox = _build(Path(ctx["work"]), args.journal_files)
    conn = sqlite3.connect(db)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("files", "jobs", "events", "copies")}
    some = conn.execute("SELECT id, path FROM files WHERE state = 'archived' ORDER BY id LIMIT 1").fetchone()
    conn.close()
    env = imgq_env({"IMGQ_DB": str(db)})
    commands = {
        "imgq --version": ([IMGQ, "--version"], None),
        "imgq status": ([IMGQ, "status"], READ_TARGET),
        "imgq status --json": ([IMGQ, "status", "--json"], READ_TARGET),
        "imgq report": ([IMGQ, "report"], READ_TARGET),
        "imgq log ID": ([IMGQ, "log", some[0]], READ_TARGET),
        "imgq log NAME": ([IMGQ, "log", os.path.basename(some[1])], READ_TARGET),
        "imgq enqueue (nothing to do)": ([IMGQ, "enqueue"], NO_OP_TARGET),
        "imgq scan INBOX (nothing new)": ([IMGQ, "scan", "--settle", "0", str(inbox)], NO_OP_TARGET),
    }
    rows = {}
    for name, (argv, target) in commands.items():
        say(f"journal: {name}")
        times = [timed_run(argv, env=env, cwd=db.parent)[0] for _ in range(args.repeat)]
        rows[name] = {"seconds": round(median(times), 3), "runs": [round(t, 3) for t in times], "target": target}
    return {
        "journal": counts,
        "inbox_files": sum(1 for _ in inbox.rglob("*") if _.is_file()),
        "commands": rows,
        "targets": [
            {"part": "journal", "name": f"{name} on {counts['files']} files", "value": r["seconds"], "target": r["target"], "unit": "s", "lower_is_better": True}
            for name, r in rows.items() if r["target"] is not None
        ],
    }


def render(res: dict) -> str:
    from bench_util import table

    j = res["journal"]
    out = [f"journal: each command, a whole process, on {j['files']} files, {j['jobs']} jobs, {j['copies']} copies, "
           f"{j['events']} events ({res['inbox_files']} files still in the inbox); median wall time"]
    rows = [[name, f"{r['seconds']:.3f}", "-" if r["target"] is None else f"< {r['target']}", " ".join(f"{t:.3f}" for t in r["runs"])]
            for name, r in res["commands"].items()]
    out.append(table(["command", "seconds", "target", "runs"], rows, right={1}))
    return "\n".join(out)
