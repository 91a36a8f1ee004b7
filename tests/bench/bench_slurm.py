"""bin/bench slurm: agents started by Slurm (``imgq work --slurm``), connecting back over
TLS, against local workers and an agent over SSH, same photos, on this machine.

The bench starts its own one-node Slurm cluster (tests/slurmcluster.py: munged,
slurmctld and slurmd as plain processes, SLURM_CONF exported; needs root and
``slurmctld slurmd slurm-client munge``) and a real sshd on 127.0.0.11
(tests/sshhosts.py). Methods, interleaved in each round:

- local:     imgq work -j2
- ssh:       imgq work --hosts 127.0.0.11/2 (one agent over SSH)
- slurm 1x2: imgq work --slurm 1 --slurm-arg=--cpus-per-task=2 (one agent of 2 CPUs)
- slurm 2x1: imgq work --slurm 2 --slurm-arg=--cpus-per-task=1 (two agents of 1 CPU)

Camera photos give throughput (steady: first claim to last done, from the journal);
"start-up" is the run's start to its first claim, which for Slurm is submitting the job,
Slurm starting it, the agent's Python importing Pillow and OpenCV, the TLS handshake and
the proof; tiny images (160x120 through ``fit:32x32``) give what each job costs the path,
TCP against SSH. Every run's artifacts are compared with the local run's, byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_OP = "fit:32x32"
METHODS = {
    "local": "imgq work -j2 (local)",
    "ssh": "--hosts 127.0.0.11/2 (SSH)",
    "slurm1x2": "--slurm 1, --cpus-per-task=2 (TCP)",
    "slurm2x1": "--slurm 2, --cpus-per-task=1 (TCP)",
}


NEEDS = {"modules": ["slurmcluster", "sshhosts", "PIL", "imgq.samples"], "programs": ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "munged", "srun", "/usr/sbin/sshd", "ssh", "ssh-keygen"], "optional": [], "root": True}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("slurm")
    g.add_argument("--slurm-photos", type=int, default=48, metavar="N", help="camera-size photos (default 48)")
    g.add_argument("--slurm-tiny", type=int, default=400, metavar="N", help="tiny images for the per-job cost (default 400)")


def _argv(method: str, ssh_config: Path) -> list:
    from bench_util import IMGQ

    return {
        "local": ["-j", 2],
        "ssh": ["--hosts", "host11/2", "--ssh-config", ssh_config, "--remote-imgq", IMGQ],
        "slurm1x2": ["--slurm", 1, "--slurm-arg=--cpus-per-task=2", "--listen", "127.0.0.1"],
        "slurm2x1": ["--slurm", 2, "--slurm-arg=--cpus-per-task=1", "--listen", "127.0.0.1"],
    }[method]


def _measure(method: str, inbox: Path, out: Path, *, ssh_config: Path, op: str | None) -> dict:
    from bench_fleet import _imgq, _work, run_timeline

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _imgq(["scan", inbox], out)
    _imgq(["enqueue", *(["--op", op] if op else [])], out)
    res = _work(_argv(method, ssh_config), out)
    return {**res, **run_timeline(out / "imgq.db")}


def run(args, ctx) -> dict:
    from bench_fleet import _summarise, _tiny_set
    from bench_local import _warm, photo_set
    from bench_util import ratio, say

    sys.path.insert(0, str(REPO / "tests"))
    import slurmcluster
    from sshhosts import SshFleet

    why = slurmcluster.missing()
    if why:
        raise RuntimeError(f"cannot start the test cluster: {why}")
    work = Path(ctx["work"])
    data = photo_set(work, args.slurm_photos, os.cpu_count() or 1)
    photos, inbox = data["photos"], Path(data["inbox"])
    _warm(inbox, photos)
    tiny = _tiny_set(work, args.slurm_tiny)
    methods = list(METHODS)
    results = {m: {"runs": [], "problems": []} for m in methods}
    tiny_results = {m: {"runs": [], "problems": []} for m in methods}
    for d in ("slurm-ssh", "slurm-cluster"):
        shutil.rmtree(work / d, ignore_errors=True)
    cluster = slurmcluster.SlurmCluster(work / "slurm-cluster").start()
    try:
        with SshFleet(work / "slurm-ssh") as fleet:
            fleet.add_host()
            for r in range(args.repeat):
                say(f"slurm: round {r + 1}/{args.repeat}")
                order = methods[r % len(methods):] + methods[: r % len(methods)]  # each method first once: no order bias
                for kind, src, res, op in (("photos", inbox, results, None), ("tiny", tiny, tiny_results, TINY_OP)):
                    for m in order:
                        say(f"slurm: {kind} {m}...")
                        try:
                            # one run folder for every method, emptied between runs: creating
                            # files costs up to 10x more in one folder of this disk than in
                            # another, which a folder per method turned into a difference
                            # between methods (bench_tcp, docs/fleet.md)
                            res[m]["runs"].append(_measure(m, src, work / "runs" / f"slurm-{kind}", ssh_config=fleet.ssh_config, op=op))
                        except Exception as e:
                            res[m]["problems"].append(str(e))
                            say(f"slurm: {kind} {m} FAILED: {e}")
                        cluster.cancel_all()  # nothing of one run left to the next
    finally:
        cluster.close()
    for d in ("runs/slurm-photos", "runs/slurm-tiny", "slurm-ssh", "slurm-cluster"):
        shutil.rmtree(work / d, ignore_errors=True)
    _summarise(results, len(photos))
    _summarise(tiny_results, args.slurm_tiny)
    rate = lambda res, m: res.get(m, {}).get("per_s")  # noqa: E731
    per_job = {m: (1000 / rate(tiny_results, m) if rate(tiny_results, m) else None) for m in methods}
    overhead = {m: (per_job[m] - per_job["local"]) if per_job[m] and per_job["local"] else None for m in methods if m != "local"}
    ratios = {f"{m} / local (steady)": ratio(rate(results, m), rate(results, "local")) for m in methods if m != "local"}
    ratios.update({f"tiny: {m} / ssh (jobs/s)": ratio(rate(tiny_results, m), rate(tiny_results, "ssh")) for m in ("slurm1x2", "slurm2x1")})
    best = max((v for k, v in ratios.items() if k.startswith("slurm") and v), default=None)
    targets = [{"part": "slurm", "name": "--slurm 2 / local -j2 (steady, the better shape)", "value": best, "target": 0.9, "unit": "x"}]
    if overhead.get("ssh") is not None and overhead.get("slurm1x2") is not None:
        targets.append({"part": "slurm", "name": "per-job overhead, TCP (--slurm 1x2) below SSH's (tiny, ms above local)",
                        "value": overhead["slurm1x2"], "target": overhead["ssh"], "unit": "ms", "lower_is_better": True})
    return {
        "photos": len(photos), "tiny": args.slurm_tiny, "tiny_op": TINY_OP, "repeat": args.repeat,
        "methods": results, "tiny_methods": tiny_results, "tiny_ms_per_job": per_job, "tiny_overhead_ms_per_job": overhead,
        "load_average": os.getloadavg(), "ratios": ratios, "targets": targets,
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    head = ["method", "per s (steady)", "per s (end to end)", "start-up s (to first claim)", "coordinator CPU ms/job", "machine CPU ms/job", "outputs"]

    def rows(methods):
        return [[METHODS[n], fmt(m.get("per_s")), fmt(m.get("end_to_end_per_s")), fmt(m.get("startup_s"), 2), fmt(m.get("coordinator_cpu_ms"), 1),
                 fmt(m.get("machine_cpu_ms"), 1), "ok" if not m["problems"] else f"PROBLEMS: {m['problems'][0]}"] for n, m in methods.items()]

    out = [f"slurm: {res['photos']} camera JPEGs -> thumb + web, {res['tiny']} tiny images -> {res['tiny_op']}; a one-node Slurm "
           f"cluster and an sshd on this machine (same CPUs); median of {res['repeat']} rounds, methods interleaved", ""]
    out.append(table(head, rows(res["methods"])))
    out += ["", "tiny images:", table(head, rows(res["tiny_methods"]))]
    for m, v in (res.get("tiny_overhead_ms_per_job") or {}).items():
        if v is not None:
            out.append(f"  per-job cost of {METHODS[m]} above local: {v:.2f} ms of wall per job")
    out.append("  start-up: `imgq work` start to its first claim; for Slurm: submit, Slurm starts the job, the agent's imports, TLS and proof")
    out.append(f"  load average at the end: {', '.join(f'{x:.1f}' for x in res.get('load_average') or [])} (other processes share these cores)")
    out += ["", table(["ratio", "value"], [[k, "-" if v is None else f"{v:.2f}x"] for k, v in res["ratios"].items()])]
    return "\n".join(out)
