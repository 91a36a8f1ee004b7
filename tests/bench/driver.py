"""The driver of bin/bench: picks the parts, describes the machine, prints the tables,
writes the JSON. See bin/bench for how to run it.

A part is a module with ``add_arguments(parser)``, ``run(args, ctx) -> dict`` (JSON-able,
with a ``targets`` list) and ``render(result) -> str``; adding one (fleet, ops, split)
means one module and one line in ``PARTS``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_util import REPO, fmt, load_average, machine_info, say, table, tool_versions  # noqa: E402

# name -> (module, what it measures)
PARTS = {
    "local": ("bench_local", "imgq vs parallel+vipsthumbnail, parallel+ImageMagick, a bare Pillow loop"),
    "queue": ("bench_queue", "no-op jobs through claim -> settle, bare SQLite baseline, fairness of two processes"),
    "memory": ("bench_memory", "peak RSS of one imgq worker rendering a 24 MP photo"),
    "split": ("bench_split", "one 100 MP image through bilateral: whole on 1 worker vs stripe jobs on 2 workers, peak memory per worker"),
    "ops": ("bench_ops", "brightness+contrast+sharpness on sets shaped like a published enhancer's (Tokyo, Crops), face detection"),
    "journal": ("bench_journal", "status, report, log, a no-op enqueue and scan on a journal of 100,000 files and 780,000 events built in SQLite"),
    "watch": ("bench_watch", "imgq run --watch: seconds from a camera photo landing in the inbox (renamed in, or written slowly) to its verified copies"),
    "fleet": ("bench_fleet", "imgq work --hosts 127.0.0.11/2 (a real sshd here) vs local -j2: throughput, per-job overhead on tiny images, bytes staged"),
    "archive": ("bench_archive", "imgq archive --transfers 4 vs rclone copy --transfers 4 and rsync -a, same files, to a local folder and over SSH: MB/s"),
    "video": ("bench_video", "1080p clips: imgq (scan | enqueue; work -j2) vs parallel -j2 ffmpeg, poster + preview; one long clip in 2 chunks vs whole"),
    "tcp": ("bench_tcp", "one agent over SSH (--hosts) vs one connected back over TLS (--listen): photos/s, per-job cost on tiny jobs"),
    "coordinator": ("bench_coordinator", "jobs/s one coordinator sustains with 32 cheap agents connected back (--shared-root), and where its CPU goes"),
    "slurm": ("bench_slurm", "imgq work --slurm 2 (a one-node Slurm cluster here) vs local -j2 and --hosts: throughput, agent start-up, per-job cost TCP vs SSH"),
}


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bin/bench",
        description="Measure imgq side by side with the tools it replaces, on this machine. A report, not a test.",
        epilog="parts: " + "; ".join(f"{k}: {v[1]}" for k, v in PARTS.items()) + ". Default: all.",
    )
    ap.add_argument("parts", nargs="*", metavar="PART", help=f"{', '.join(PARTS)} or all (default: all)")
    ap.add_argument("--repeat", "-r", type=int, default=3, metavar="R", help="runs of each measurement; the median is reported (default 3)")
    ap.add_argument("--out", default=str(REPO / "bench-results.json"), metavar="PATH", help="JSON results file (default: bench-results.json in the repository)")
    ap.add_argument("--work", default=str(REPO / "bench-work"), metavar="DIR", help="cache of generated photos and scratch space (default: bench-work/)")
    ap.add_argument("--check", action="store_true", help="measure nothing: say whether each part can run here (its Python modules, programs, root); exit 1 if one cannot")
    mods = {}
    for name, (module, _) in PARTS.items():
        mods[name] = importlib.import_module(module)
        mods[name].add_arguments(ap)
    args = ap.parse_args(argv)
    parts = args.parts or ["all"]
    if "all" in parts:
        parts = list(PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s): {', '.join(bad)} (choose from {', '.join(PARTS)}, all)")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args, parts, mods


def header(machine: dict, tools: dict) -> str:
    lines = [
        "imgq bench  " + dt.datetime.now().isoformat(timespec="seconds"),
        f"machine: {machine['nproc']} CPUs usable ({machine['cpu_count']} online), {machine['cpu_model']}, "
        f"{fmt(machine['mem_total_mb'])} MB RAM, Linux {machine['kernel']}, load average {machine.get('load_average_at_start')}",
        "tools:   " + ", ".join(f"{k} {v}" for k, v in tools.items() if k in ("python", "pillow", "libjpeg", "sqlite")),
    ]
    for k in ("vipsthumbnail", "imagemagick", "parallel", "imgq"):
        lines.append(f"         {k}: {tools.get(k) or 'not installed'}")
    return "\n".join(lines)


def check(parts: list[str], mods: dict) -> int:
    """Whether each part can run here, without running it: imports every Python module it
    imports when it runs, finds every program it calls and sees whether it has the root it
    needs. Prints one line per part; 0 when every part can run, else 1."""
    from bench_util import IMGQ

    sys.path.insert(0, str(REPO / "tests"))  # the tests' helpers the parts use (sshhosts, journal_sample)
    missing_any = False
    for name in parts:
        needs = mods[name].NEEDS
        missing = [] if os.access(IMGQ, os.X_OK) else [IMGQ]
        for module in needs["modules"]:
            try:
                importlib.import_module(module)
            except ImportError as e:
                missing.append(f"{module} ({e})")
        missing += [p for p in needs["programs"] if not _program(p)]
        if needs["root"] and os.geteuid() != 0:
            missing.append("root")
        skipped = [p for p in needs["optional"] if not _program(p)]
        missing_any |= bool(missing)
        line = f"{name}: " + (f"cannot run: missing {', '.join(missing)}" if missing else "ready")
        print(line + (f" (without {', '.join(skipped)}: their methods are skipped)" if skipped else ""), flush=True)
    return 1 if missing_any else 0


def _program(name: str) -> bool:
    return os.access(name, os.X_OK) if os.path.isabs(name) else shutil.which(name) is not None


def main(argv=None) -> int:
    args, parts, mods = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        return check(parts, mods)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine, tools = machine_info(), tool_versions()
    machine["load_average_at_start"] = load_average()
    results = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine,
        "tools": tools,
        "parts": {},
        "targets": [],
    }
    print(header(machine, tools), flush=True)
    out_path = Path(args.out)
    broken = False
    for name in parts:
        say(f"--- {name}")
        t0 = time.time()
        try:
            res = mods[name].run(args, {"work": str(work), "machine": machine, "tools": tools})
        except Exception as e:
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}", "targets": []}
        res["seconds"] = round(time.time() - t0, 1)
        results["parts"][name] = res
        results["targets"] += res.get("targets", [])
        print(f"\n== {name} ({res['seconds']:.0f} s)")
        if "error" in res:
            print(f"FAILED: {res['error']}")
            broken = True
        else:
            print(mods[name].render(res), flush=True)
            broken |= _has_problems(res)
        _write(out_path, results, started)

    if results["targets"]:
        rows = []
        for t in results["targets"]:
            lower = t.get("lower_is_better", False)
            v = t["value"]
            t["met"] = None if v is None else (v < t["target"] if lower else v >= t["target"])
            rows.append([t["part"], t["name"], _amount(v, t["unit"]), ("< " if lower else ">= ") + _amount(t["target"], t["unit"]),
                         "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")])
        print("\n== targets")
        print(table(["part", "figure", "measured", "target", ""], rows, right={2, 3}))
    total = time.time() - started
    print(f"\n{total:.0f} s in all; JSON: {out_path}")
    _write(out_path, results, started)
    return 1 if broken else 0


def _amount(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":  # seconds: start-up and journal times are fractions of one
        return f"{value:.2f} s"
    return f"{fmt(float(value), 0)} {unit}"


def _has_problems(res: dict) -> bool:
    """A method that produced wrong or missing outputs makes the bench itself fail."""
    return any(m.get("problems") for m in res.get("methods", {}).values())


def _write(path: Path, results: dict, started: float) -> None:
    results["seconds"] = round(time.time() - started, 1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
