"""bin/bench coordinator: how many jobs per second one coordinator sustains, with many
cheap agents connected back over TLS in ``--shared-root`` mode (the cluster setting: the
coordinator only claims, dispatches and settles), and where its CPU goes.

- ``imgq work --listen 127.0.0.1 --shared-root INBOX --shared-store --follow`` on an
  empty queue (``--shared-store`` only where the imgq measured has it: an older checkout
  on ``PYTHONPATH``, for a before and after, runs as it did);
- N agents (``imgq agent --secret-file --slots 1 --shared-root INBOX --shared-store
  STORE``, default 32) dial
  it (``--host-timeout 60``: 32 Pythons starting on 2 cores miss beats); when all are up, the tiny images (160x120) are enqueued through ``fit:32x32``
  (next to no rendering), and the clock runs until every job is done;
- jobs/s (wall, enqueue to all done) and the coordinator's CPU per job (its process's
  utime + stime over the same span). On this 2-core machine the agents compete with the
  coordinator for the CPUs, so the wall rate is the machine's limit; ``1000 / CPU ms per
  job`` is what one coordinator core would feed with the agents elsewhere.
- ``--coord-profile``: py-spy samples the coordinator, every thread, while the jobs run
  (``pip install py-spy`` into .venv; bin/bench does not install it), only the samples
  of the thread holding the GIL (``--gil``: Python at work, not threads waiting in
  recv, poll or a queue, which otherwise fill most samples); the functions with the
  most samples, on their own and with what they call, are printed and kept in the JSON.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

TINY_OP = "fit:32x32"


NEEDS = {"modules": ["bench_fleet", "PIL", "imgq.samples"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("coordinator")
    g.add_argument("--coord-agents", type=int, default=32, metavar="N", help="agents connected back, one slot each (default 32)")
    g.add_argument("--coord-jobs", type=int, default=3000, metavar="N", help="tiny jobs (default 3000)")
    g.add_argument("--coord-profile", action="store_true", help="run the coordinator under cProfile and print where its CPU goes")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shares_store() -> bool:
    """Whether the imgq measured has ``--shared-store`` (agents write artifacts into the
    store themselves); an older one (``PYTHONPATH`` at another checkout, for a before
    and after) is measured without it, as it ran."""
    from bench_util import IMGQ, imgq_env

    r = subprocess.run([IMGQ, "work", "--help"], env=imgq_env({"COLUMNS": "300"}), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return "--shared-store" in r.stdout


def _one(inbox: Path, out: Path, *, agents: int, jobs: int, profile: bool, say, shared_store: bool = False) -> dict:
    from bench_fleet import _imgq
    from bench_util import IMGQ, PYTHON, imgq_env

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _imgq(["scan", inbox], out)
    env = imgq_env()
    prof = out / "coordinator.stacks"
    store = ["--shared-store"] if shared_store else []
    coord = subprocess.Popen([IMGQ, "work", "--listen", "127.0.0.1", "--agent-file", out / "run.env", "--shared-root", inbox, *store, "--follow", "--poll", "0.2", "--host-timeout", "60"],
                             cwd=out, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(out / "coordinator.err", "wb"))
    procs = []
    try:
        while not (out / "run.env").exists():
            if coord.poll() is not None:
                raise RuntimeError(f"imgq work --listen exited {coord.returncode}: {(out / 'coordinator.err').read_text()[-800:]}")
            time.sleep(0.05)
        for i in range(agents):
            procs.append(subprocess.Popen([IMGQ, "agent", "--secret-file", out / "run.env", "--slots", "1", "--shared-root", inbox, *(store and [*store, out / "imgq-store"]),
                                           "--workdir", out / "agents", "--name", f"a{i:02d}"],
                                          cwd=out, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        db = sqlite3.connect(out / "imgq.db", timeout=30)
        deadline = time.monotonic() + 180
        while db.execute("SELECT count(*) FROM hosts WHERE state = 'up'").fetchone()[0] < agents:
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not all connect in 180 s")
            time.sleep(0.2)
        say(f"coordinator: {agents} agents up; enqueueing {jobs} jobs")
        spy = None
        if profile:
            spy = subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "-p", str(coord.pid), "-f", "raw", "-o", str(prof), "-r", "200", "--nonblocking", "--gil"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0, t0 = _cpu(coord.pid), time.perf_counter()
        _imgq(["enqueue", "--op", TINY_OP], out)
        while db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] < jobs:
            if coord.poll() is not None:
                raise RuntimeError(f"the coordinator exited {coord.returncode}: {(out / 'coordinator.err').read_text()[-800:]}")
            time.sleep(0.02)
        wall, cpu = time.perf_counter() - t0, _cpu(coord.pid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        first, last = db.execute("SELECT min(at), max(at) FROM events WHERE entity = 'job' AND to_state IN ('leased', 'done')").fetchone()
        db.close()
    finally:
        coord.send_signal(signal.SIGTERM)
        try:
            coord.wait(timeout=60)
        except subprocess.TimeoutExpired:
            coord.kill()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    res = {"wall": wall, "jobs_per_s": jobs / wall, "steady_jobs_per_s": jobs / (last - first), "coordinator_cpu_ms_per_job": 1000 * cpu / jobs,
           "one_core_feeds_jobs_per_s": jobs / cpu if cpu else None}
    if profile and prof.exists():
        res["profile"] = _top(prof)
    return res


def _top(stacks: Path, n: int = 25) -> dict:
    """py-spy's collapsed stacks -> the functions with most samples: on their own
    (the innermost frame) and inclusive (anywhere on the stack), as % of all samples."""
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        names = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") if "(" in f else f for f in frames.split(";")[1:]]
        if names:
            own[names[-1]] += k
        for name in set(names):
            incl[name] += k
    pct = lambda c: [f"{100 * v / total:5.1f}%  {k}" for k, v in c.most_common(n)]  # noqa: E731
    return {"samples": total, "self": pct(own), "inclusive": pct(incl)}


def run(args, ctx) -> dict:
    from bench_fleet import _tiny_set
    from bench_util import median, say

    work = Path(ctx["work"])
    inbox = _tiny_set(work, args.coord_jobs)
    runs = []
    shared_store = _shares_store()
    for r in range(args.repeat):
        say(f"coordinator: round {r + 1}/{args.repeat}")
        runs.append(_one(inbox, work / "runs" / "coordinator", agents=args.coord_agents, jobs=args.coord_jobs, profile=args.coord_profile, say=say, shared_store=shared_store))
    shutil.rmtree(work / "runs" / "coordinator", ignore_errors=True)
    feeds = median([r["one_core_feeds_jobs_per_s"] for r in runs if r["one_core_feeds_jobs_per_s"]])
    return {
        "agents": args.coord_agents, "jobs": args.coord_jobs, "op": TINY_OP, "repeat": args.repeat, "runs": runs, "shared_store": shared_store,
        "jobs_per_s": median([r["jobs_per_s"] for r in runs]), "coordinator_cpu_ms_per_job": median([r["coordinator_cpu_ms_per_job"] for r in runs]),
        "one_core_feeds_jobs_per_s": feeds, "load_average": os.getloadavg(),
        "targets": [{"part": "coordinator", "name": "jobs/s one coordinator core feeds (shared root, tiny jobs)", "value": feeds, "target": 1000, "unit": "jobs/s"}],
    }


def render(res: dict) -> str:
    from bench_util import fmt

    out = [f"coordinator: {res['jobs']} tiny jobs ({res['op']}) through {res['agents']} agents connected back over TLS, --shared-root"
           + (" --shared-store" if res.get("shared_store") else "") + "; "
           f"median of {res['repeat']} runs",
           f"  jobs/s, enqueue to all done (this machine: the agents share its 2 cores): {fmt(res['jobs_per_s'])}",
           f"  coordinator CPU per job: {fmt(res['coordinator_cpu_ms_per_job'], 3)} ms -> one coordinator core feeds {fmt(res['one_core_feeds_jobs_per_s'], 0)} jobs/s",
           f"  load average at the end: {', '.join(f'{x:.1f}' for x in res['load_average'])}"]
    prof = (res["runs"][-1].get("profile") or {}) if res["runs"] else {}
    for key in ("self", "inclusive"):
        if key in prof:
            out += [f"  coordinator, the thread holding the GIL, py-spy: % of {prof['samples']} samples, {key} (last run):"] + ["    " + x for x in prof[key]]
    return "\n".join(out)
