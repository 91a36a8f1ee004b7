"""bin/bench fleet: imgq work on a host over SSH against imgq work locally, same photos.

The host is a real OpenSSH server on 127.0.0.11 (tests/sshhosts.py, needs root) on this
same machine, so the host's two slots, its sshd and the coordinator share the CPUs the
local run has to itself: every cost of the remote path (encryption both ways, staging,
framing, verification on arrival) shows up as lost throughput, nothing hides behind
extra cores. Methods, interleaved in each round:

- local:   imgq work -j2
- staged:  imgq work --hosts 127.0.0.11/2 (each photo's bytes sent to the agent)
- shared:  the same with --shared-root (the host reads the photo itself: only a path goes)

Throughput is photos / (last job done - first job claimed), read from the journal, so the
one-off start-up (ssh handshake, a Python with Pillow and OpenCV on the host: about 2 s)
is reported apart, not smeared over a short batch. Then tiny images (160x120) measure
the per-job overhead of the remote path, and each run's bytes sent and received give
what staging costs per photo. Every run's artifacts are compared with the local run's,
byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_VERSION = 1


# What the part needs to run here (bin/bench --check): see bench_local; the host is the
# tests' sshd helper (tests/sshhosts.py, which imports pytest)
NEEDS = {"modules": ["pytest", "sshhosts", "PIL", "imgq.samples"], "programs": ["/usr/sbin/sshd", "ssh", "ssh-keygen"], "optional": [], "root": True}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("fleet")
    g.add_argument("--fleet-photos", type=int, default=96, metavar="N", help="camera-size photos for the throughput comparison (default 96)")
    g.add_argument("--fleet-tiny", type=int, default=400, metavar="N", help="tiny images for the per-job overhead (default 400)")
    g.add_argument("--fleet-slots", type=int, default=2, metavar="N", help="slots of the host and local processes (default 2)")


def _tiny_set(work: Path, count: int) -> Path:
    from imgq import samples

    inbox = work / f"fleet-tiny-v{TINY_VERSION}-n{count}" / "inbox"
    done = inbox.parent / "done"
    if not done.exists():
        shutil.rmtree(inbox, ignore_errors=True)
        past = time.time() - 3600
        for i in range(count):
            p = samples.make_photo(inbox / f"o{i % 4}" / f"t{i:04d}.jpg", width=160, height=120, seed=50_000 + i)
            os.utime(p, (past, past))
        done.write_text("ok\n")
    return inbox


def _imgq(argv, cwd: Path) -> subprocess.CompletedProcess:
    from bench_util import IMGQ, imgq_env

    r = subprocess.run([IMGQ, *map(str, argv)], cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"imgq {' '.join(map(str, argv[:3]))} exited {r.returncode}: {r.stderr[-800:]}")
    return r


def _work(argv, cwd: Path) -> dict:
    """Run `imgq work ...` and measure it: wall, its own CPU (and its children's), the
    whole machine's busy CPU meanwhile (which includes sshd and the agent)."""
    from bench_util import IMGQ, _cpu_stat, imgq_env

    stat0, t0 = _cpu_stat(), time.perf_counter()
    p = subprocess.Popen([IMGQ, "work", *map(str, argv)], cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stat1 = _cpu_stat()
    if p.returncode != 0:
        raise RuntimeError(f"imgq work exited {p.returncode}: {err.decode()[-800:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "machine_cpu": (stat1[0] - stat0[0]) if stat0 and stat1 else None}


def _measure(method: str, inbox: Path, out: Path, *, slots: int, ssh_config: Path, imgq_path: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _imgq(["scan", inbox], out)
    _imgq(["enqueue"], out)
    fleet = ["--hosts", f"host11/{slots}", "--ssh-config", ssh_config, "--remote-imgq", imgq_path]
    argv = {"local": ["-j", slots], "staged": fleet, "shared": [*fleet, "--shared-root", inbox]}[method]
    return {**_work(argv, out), **run_timeline(out / "imgq.db")}


def run_timeline(db: Path) -> dict:
    """What the journal of one `imgq work` says about it: from its start to the first
    claim (``startup``), first claim to last job done (``steady``), jobs done and not,
    each artifact's sha256 by (path, name), and the bytes its hosts moved."""
    conn = sqlite3.connect(db)
    try:
        first = conn.execute("SELECT min(at) FROM events WHERE entity = 'job' AND to_state = 'leased'").fetchone()[0]
        last = conn.execute("SELECT max(at) FROM events WHERE entity = 'job' AND to_state = 'done'").fetchone()[0]
        started, counts = conn.execute("SELECT started_at, counts FROM runs WHERE command = 'work'").fetchone()
        counts = json.loads(counts or "{}")
        res = {
            "jobs": conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0],
            "not_done": conn.execute("SELECT count(*) FROM jobs WHERE state != 'done'").fetchone()[0],
            "artifacts": {(p, n): s for p, n, s in conn.execute("SELECT f.path, a.name, a.sha256 FROM artifacts a JOIN files f ON f.id = a.file_id")},
        }
    finally:
        conn.close()
    return {**res, "steady": last - first, "startup": first - started, "bytes_out": counts.get("bytes_out"), "bytes_in": counts.get("bytes_in")}


def _round(methods, inbox, out_root, kind, args, fleet, imgq_path, results, say) -> None:
    for m in methods:
        say(f"fleet: {kind} {m}...")
        try:
            r = _measure(m, inbox, out_root / m, slots=args.fleet_slots, ssh_config=fleet.ssh_config, imgq_path=imgq_path)
        except Exception as e:
            results[m]["problems"].append(str(e))
            say(f"fleet: {kind} {m} FAILED: {e}")
            continue
        results[m]["runs"].append(r)


def _summarise(results: dict, n: int, local_key="local") -> None:
    from bench_util import median

    ref = None
    if results.get(local_key, {}).get("runs"):
        ref = results[local_key]["runs"][-1]["artifacts"]
    for name, res in results.items():
        runs = res.pop("runs")
        for r in runs:
            arts = r.pop("artifacts")
            if r["not_done"]:
                res["problems"].append(f"{r['not_done']} jobs not done")
            if ref is not None and arts != ref:
                diff = sum(1 for k in ref if arts.get(k) != ref[k]) + len(set(arts) - set(ref))
                res["problems"].append(f"{diff} artifacts differ from local processing")
        if not runs:
            continue
        res["runs"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]
        steady = median([r["steady"] for r in runs])
        res["per_s"] = n / steady if steady else None
        res["end_to_end_per_s"] = n / median([r["wall"] for r in runs])
        res["startup_s"] = median([r["startup"] for r in runs])
        res["coordinator_cpu_ms"] = 1000 * median([r["cpu"] for r in runs]) / n
        mc = [r["machine_cpu"] for r in runs if r["machine_cpu"] is not None]
        res["machine_cpu_ms"] = 1000 * median(mc) / n if mc else None
        if runs[0].get("bytes_out") is not None:
            res["bytes_out_per_job"] = median([r["bytes_out"] for r in runs]) / n
            res["bytes_in_per_job"] = median([r["bytes_in"] for r in runs]) / n


def run(args, ctx) -> dict:
    from bench_local import _warm, photo_set
    from bench_util import IMGQ, ratio, say

    if os.geteuid() != 0:
        raise RuntimeError("needs root: the host is a real sshd started by tests/sshhosts.py")
    sys.path.insert(0, str(REPO / "tests"))
    from sshhosts import SshFleet

    work = Path(ctx["work"])
    data = photo_set(work, max(24, args.fleet_photos), os.cpu_count() or 1)
    photos, inbox = data["photos"], Path(data["inbox"])
    _warm(inbox, photos)
    tiny = _tiny_set(work, args.fleet_tiny)
    methods = ["local", "staged", "shared"]
    results = {m: {"runs": [], "problems": []} for m in methods}
    tiny_results = {m: {"runs": [], "problems": []} for m in ("local", "staged")}
    ssh_dir = work / "fleet-ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    with SshFleet(ssh_dir) as fleet:
        fleet.add_host()
        for r in range(args.repeat):
            say(f"fleet: round {r + 1}/{args.repeat}")
            _round(methods, inbox, work / "runs" / "fleet", "photos", args, fleet, IMGQ, results, say)
            _round(list(tiny_results), tiny, work / "runs" / "fleet-tiny", "tiny", args, fleet, IMGQ, tiny_results, say)
    shutil.rmtree(work / "runs" / "fleet", ignore_errors=True)
    shutil.rmtree(work / "runs" / "fleet-tiny", ignore_errors=True)
    shutil.rmtree(ssh_dir, ignore_errors=True)
    n, n_tiny = len(photos), args.fleet_tiny
    _summarise(results, n)
    _summarise(tiny_results, n_tiny)
    rate = lambda res, m: res.get(m, {}).get("per_s")  # noqa: E731
    ratios = {
        "staged / local (steady)": ratio(rate(results, "staged"), rate(results, "local")),
        "shared-root / local (steady)": ratio(rate(results, "shared"), rate(results, "local")),
        "staged / local (end to end)": ratio(results["staged"].get("end_to_end_per_s"), results["local"].get("end_to_end_per_s")),
        "tiny: host / local (jobs/s)": ratio(rate(tiny_results, "staged"), rate(tiny_results, "local")),
    }
    lt, st = rate(tiny_results, "local"), rate(tiny_results, "staged")
    overhead = (1000 / st - 1000 / lt) if lt and st else None
    staged, shared = results["staged"], results["shared"]
    mb_per_photo = (staged.get("bytes_out_per_job") or 0) / 1e6
    cpu_per_mb = None  # what staging adds on the coordinator: staged minus shared-root, per MB
    if staged.get("coordinator_cpu_ms") and shared.get("coordinator_cpu_ms") and mb_per_photo:
        cpu_per_mb = (staged["coordinator_cpu_ms"] - shared["coordinator_cpu_ms"]) / mb_per_photo
    # where one coordinator stops keeping up: its CPU (one core: the SSH layer holds the
    # GIL), or its network (bytes each photo moves, both ways, on 1 Gbit/s)
    limits = {}
    for name in ("staged", "shared"):
        m = results[name]
        if m.get("coordinator_cpu_ms"):
            limits[f"{name}: photos/s one coordinator core can feed"] = 1000 / m["coordinator_cpu_ms"]
        if m.get("bytes_out_per_job") is not None:
            limits[f"{name}: photos/s a 1 Gbit/s link carries"] = 125e6 / (m["bytes_out_per_job"] + m["bytes_in_per_job"])
    return {
        "photos": n,
        "megapixels_mean": round(sum(p["stored"][0] * p["stored"][1] for p in photos) / n / 1e6, 1),
        "bytes_per_photo": sum(p.get("bytes", 0) for p in photos) / n,
        "tiny": n_tiny,
        "slots": args.fleet_slots,
        "repeat": args.repeat,
        "methods": results,
        "tiny_methods": tiny_results,
        "ratios": ratios,
        "tiny_overhead_ms_per_job": overhead,
        "coordinator_cpu_ms_per_mb_staged": cpu_per_mb,
        "coordinator_limits": limits,
        "targets": [
            {"part": "fleet", "name": "--hosts 127.0.0.11/2 / local -j2 (staged, steady)", "value": ratios["staged / local (steady)"], "target": 0.85, "unit": "x"},
            {"part": "fleet", "name": "--hosts 127.0.0.11/2 --shared-root / local -j2 (steady)", "value": ratios["shared-root / local (steady)"], "target": 0.85, "unit": "x"},
        ],
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    labels = {"local": "imgq work -j{s} (local)", "staged": "--hosts 127.0.0.11/{s} (bytes staged)", "shared": "--hosts 127.0.0.11/{s} --shared-root"}
    out = [f"fleet: {res['photos']} camera JPEGs ({res['megapixels_mean']} MP mean, {res['bytes_per_photo'] / 1e6:.1f} MB) -> thumb + web; "
           f"the host is an sshd on this machine (same CPUs); median of {res['repeat']} rounds, methods interleaved", ""]

    def rows(methods, s):
        lines = []
        for name, m in methods.items():
            note = "ok" if not m["problems"] else f"PROBLEMS: {m['problems'][0]}"
            lines.append([labels[name].format(s=s), fmt(m.get("per_s")), fmt(m.get("end_to_end_per_s")), fmt(m.get("startup_s"), 2),
                          fmt(m.get("coordinator_cpu_ms"), 1), fmt(m.get("machine_cpu_ms"), 1),
                          fmt((m.get("bytes_out_per_job") or 0) / 1e3, 1) if m.get("bytes_out_per_job") is not None else "-",
                          fmt((m.get("bytes_in_per_job") or 0) / 1e3, 1) if m.get("bytes_in_per_job") is not None else "-", note])
        return lines

    head = ["method", "per s (steady)", "per s (end to end)", "start-up s", "coordinator CPU ms/job", "machine CPU ms/job", "kB out/job", "kB in/job", "outputs"]
    out.append(table(head, rows(res["methods"], res["slots"])))
    out.append("")
    out.append(f"tiny images (160x120), {res['tiny']} jobs:")
    out.append(table(head, rows(res["tiny_methods"], res["slots"])))
    out.append("  steady: jobs / (last done - first claimed), from the journal; start-up: `imgq work` start to its first claim "
               "(ssh handshake + the agent's Python with Pillow and OpenCV, for the hosts)")
    out.append("  coordinator CPU: user+sys of the `imgq work` process (for local, its workers too); machine CPU: every process "
               "(sshd and the agent included), per job")
    if res.get("tiny_overhead_ms_per_job") is not None:
        out.append(f"  per-job overhead of the remote path on tiny images: {res['tiny_overhead_ms_per_job']:.2f} ms of wall per job")
    if res.get("coordinator_cpu_ms_per_mb_staged"):
        out.append(f"  staging adds {res['coordinator_cpu_ms_per_mb_staged']:.1f} ms of coordinator CPU per MB sent (staged minus shared-root)")
    for k, v in (res.get("coordinator_limits") or {}).items():
        out.append(f"  {k}: {v:,.0f}")
    out.append("")
    out.append(table(["ratio", "value"], [[k, "-" if v is None else f"{v:.2f}x"] for k, v in res["ratios"].items()]))
    return "\n".join(out)
