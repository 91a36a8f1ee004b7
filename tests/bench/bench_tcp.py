"""bin/bench tcp: one agent reached over SSH (``--hosts``) against one agent that
connected back over TLS (``--listen``), same photos, same slots, on this machine.

- local: imgq work -j2 (the reference for the outputs and for per-job cost)
- ssh:   imgq work --hosts 127.0.0.11/2 (a real sshd, tests/sshhosts.py; needs root)
- tcp:   imgq work --listen 127.0.0.1 and one `imgq agent --connect --slots 2` beside it

Camera photos give throughput (photos/s, steady: first claim to last done, from the
journal) and the coordinator's CPU per photo; tiny images (160x120) through a one-op
recipe (``fit:32x32``: next to no rendering) isolate what each job costs the path:
ms of wall per job above local, and TCP against SSH. Every run's artifacts are compared
with the local run's, byte for byte. Methods are interleaved in each round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_OP = "fit:32x32"


# What the part needs to run here (bin/bench --check): see bench_fleet
NEEDS = {"modules": ["pytest", "sshhosts", "PIL", "imgq.samples"], "programs": ["/usr/sbin/sshd", "ssh", "ssh-keygen"], "optional": [], "root": True}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("tcp")
    g.add_argument("--tcp-photos", type=int, default=96, metavar="N", help="camera-size photos (default 96)")
    g.add_argument("--tcp-tiny", type=int, default=400, metavar="N", help="tiny images for the per-job cost (default 400)")
    g.add_argument("--tcp-slots", type=int, default=2, metavar="N", help="slots of the one agent and local processes (default 2)")


def _run_tcp(argv: list, cwd: Path, slots: int) -> dict:
    """The coordinator with --listen and one agent beside it; wall, coordinator CPU,
    agent CPU (its slots included), machine CPU."""
    from bench_util import IMGQ, _cpu_stat, imgq_env

    env = imgq_env()
    stat0, t0 = _cpu_stat(), time.perf_counter()
    coord = subprocess.Popen([IMGQ, "work", "--listen", "127.0.0.1", "--agent-file", cwd / "run.env", *map(str, argv)], cwd=cwd, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (cwd / "run.env").exists():
        if coord.poll() is not None:
            raise RuntimeError(f"imgq work --listen exited {coord.returncode}: {coord.stderr.read().decode()[-800:]}")
        time.sleep(0.02)
    # its session folder where the SSH agent's is (the default ~/.imgq/agent: the same user
    # on this machine): creating and removing a job's files costs 0.1-0.9 ms of CPU
    # depending on the folder's place on the disk, which made a folder, not the transport, the difference
    agent = subprocess.Popen([IMGQ, "agent", "--secret-file", cwd / "run.env", "--slots", str(slots)],
                             cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = coord.stderr.read()
    _, status, usage = os.wait4(coord.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    _, astatus, ausage = os.wait4(agent.pid, 0)
    stat1 = _cpu_stat()
    if code != 0:
        raise RuntimeError(f"imgq work --listen exited {code}: {err.decode()[-800:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "agent_cpu": ausage.ru_utime + ausage.ru_stime,
            "machine_cpu": (stat1[0] - stat0[0]) if stat0 and stat1 else None}


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children it has reaped (cutime + cstime): for the sshd
    listener of the host, its sessions' sshd and the agents they ran, once they ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def set_aside(out: Path) -> None:
    """Move the last run's folder out of the way (into ``runs/set-aside``, removed when the
    part ends) rather than delete it before the next run. Deleting a run's store (600
    folders and 600 files) right before the next run made every file and folder that run
    created cost the coordinator (and local workers) ~1 ms of kernel CPU: ext4's inode
    allocator skips over inodes freed in the last minutes, one inode table lookup each
    (``recently_deleted`` in ``perf``: a third of a tiny-job coordinator's CPU), and a
    store that only grows never pays that."""
    if out.exists():
        aside = out.parent / "set-aside"
        aside.mkdir(exist_ok=True)
        out.rename(aside / f"{out.name}-{time.monotonic_ns()}")


def _measure(method: str, inbox: Path, out: Path, *, slots: int, ssh_config: Path, op: str | None, sshd_pid: int | None = None) -> dict:
    from bench_fleet import _imgq, _work, run_timeline
    from bench_util import IMGQ

    set_aside(out)
    out.mkdir(parents=True)
    _imgq(["scan", inbox], out)
    _imgq(["enqueue", *(["--op", op] if op else [])], out)
    if method == "tcp":
        res = _run_tcp([], out, slots)
    else:
        argv = {"local": ["-j", slots], "ssh": ["--hosts", f"host11/{slots}", "--ssh-config", ssh_config, "--remote-imgq", IMGQ]}[method]
        before = _reaped_cpu(sshd_pid) if method == "ssh" else None
        res = _work(argv, out)
        if method == "ssh":
            deadline = time.monotonic() + 10
            while _reaped_cpu(sshd_pid) == before and time.monotonic() < deadline:
                time.sleep(0.05)  # the session ends just after the coordinator
            time.sleep(0.3)
            res["agent_cpu"] = _reaped_cpu(sshd_pid) - before
    return {**res, **run_timeline(out / "imgq.db")}


def run(args, ctx) -> dict:
    from bench_fleet import _summarise, _tiny_set
    from bench_local import _warm, photo_set
    from bench_util import median, say

    if os.geteuid() != 0:
        raise RuntimeError("needs root: the SSH agent's host is a real sshd started by tests/sshhosts.py")
    sys.path.insert(0, str(REPO / "tests"))
    from sshhosts import SshFleet

    work = Path(ctx["work"])
    data = photo_set(work, args.tcp_photos, os.cpu_count() or 1)
    photos, inbox = data["photos"], Path(data["inbox"])
    _warm(inbox, photos)
    tiny = _tiny_set(work, args.tcp_tiny)
    methods = ["local", "ssh", "tcp"]
    results = {m: {"runs": [], "problems": []} for m in methods}
    tiny_results = {m: {"runs": [], "problems": []} for m in methods}
    ssh_dir = work / "tcp-ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    with SshFleet(ssh_dir) as fleet:
        fleet.add_host()
        for r in range(args.repeat):
            say(f"tcp: round {r + 1}/{args.repeat}")
            for kind, src, res, op in (("photos", inbox, results, None), ("tiny", tiny, tiny_results, TINY_OP)):
                for m in methods[r % 3:] + methods[: r % 3]:  # each method first in one round: no order bias
                    say(f"tcp: {kind} {m}...")
                    try:
                        # one run folder for every method (emptied between runs), for the same reason
                        res[m]["runs"].append(_measure(m, src, work / "runs" / f"tcp-{kind}", slots=args.tcp_slots, ssh_config=fleet.ssh_config, op=op, sshd_pid=fleet.hosts[0].pid))
                    except Exception as e:
                        res[m]["problems"].append(str(e))
                        say(f"tcp: {kind} {m} FAILED: {e}")
    shutil.rmtree(work / "runs" / "tcp-photos", ignore_errors=True)
    shutil.rmtree(work / "runs" / "tcp-tiny", ignore_errors=True)
    shutil.rmtree(work / "runs" / "set-aside", ignore_errors=True)
    shutil.rmtree(ssh_dir, ignore_errors=True)
    # the agent's own process (its slots are killed, not reaped: rendering is not in it),
    # plus, over SSH, the sshd session that carries its bytes: what the path costs a host
    agent_cpu = {(name, m): [r["agent_cpu"] for r in res[m]["runs"]] for name, res in (("photos", results), ("tiny", tiny_results)) for m in ("ssh", "tcp")}
    _summarise(results, len(photos))
    _summarise(tiny_results, args.tcp_tiny)
    rate = lambda res, m: res.get(m, {}).get("per_s")  # noqa: E731
    per_job = {m: (1000 / rate(tiny_results, m) if rate(tiny_results, m) else None) for m in methods}
    overhead = {m: (per_job[m] - per_job["local"]) if per_job[m] and per_job["local"] else None for m in ("ssh", "tcp")}
    return {
        "photos": len(photos), "tiny": args.tcp_tiny, "tiny_op": TINY_OP, "slots": args.tcp_slots, "repeat": args.repeat,
        "methods": results, "tiny_methods": tiny_results,
        "host_path_cpu_ms_per_job": {f"{k[0]} {k[1]}": (1000 * median(v) / (len(photos) if k[0] == "photos" else args.tcp_tiny) if v else None) for k, v in agent_cpu.items()},
        "load_average": os.getloadavg(),
        "tiny_ms_per_job": per_job, "tiny_overhead_ms_per_job": overhead,
        "ratios": {
            "tcp / ssh photos/s (steady)": _ratio(rate(results, "tcp"), rate(results, "ssh")),
            "tcp / local photos/s (steady)": _ratio(rate(results, "tcp"), rate(results, "local")),
            "ssh / local photos/s (steady)": _ratio(rate(results, "ssh"), rate(results, "local")),
            "tiny: tcp / ssh jobs/s": _ratio(rate(tiny_results, "tcp"), rate(tiny_results, "ssh")),
        },
        "targets": [
            {"part": "tcp", "name": "per-job overhead, TCP below SSH's (tiny jobs, ms above local)", "value": overhead["tcp"], "target": overhead["ssh"], "unit": "ms", "lower_is_better": True},
        ] if overhead["ssh"] is not None else [],
    }


def _ratio(a, b):
    return a / b if a and b else None


def render(res: dict) -> str:
    from bench_util import fmt, table

    labels = {"local": "imgq work -j{s} (local)", "ssh": "--hosts 127.0.0.11/{s} (one agent over SSH)", "tcp": "--listen + one agent --connect --slots {s}"}
    head = ["method", "per s (steady)", "per s (end to end)", "start-up s", "coordinator CPU ms/job", "machine CPU ms/job", "outputs"]

    def rows(methods, s):
        return [[labels[n].format(s=s), fmt(m.get("per_s")), fmt(m.get("end_to_end_per_s")), fmt(m.get("startup_s"), 2),
                 fmt(m.get("coordinator_cpu_ms"), 1), fmt(m.get("machine_cpu_ms"), 1), "ok" if not m["problems"] else f"PROBLEMS: {m['problems'][0]}"]
                for n, m in methods.items()]

    out = [f"tcp: {res['photos']} camera JPEGs -> thumb + web, and {res['tiny']} tiny images -> {res['tiny_op']}; one agent of "
           f"{res['slots']} slots on this machine, over SSH or connected back over TLS; median of {res['repeat']} rounds", ""]
    out.append(table(head, rows(res["methods"], res["slots"])))
    out.append("")
    out.append(f"tiny images ({res['tiny_op']}):")
    out.append(table(head, rows(res["tiny_methods"], res["slots"])))
    for m, v in (res.get("tiny_overhead_ms_per_job") or {}).items():
        if v is not None:
            out.append(f"  per-job cost of the {m} path above local: {v:.2f} ms of wall per job")
    for k, v in (res.get("host_path_cpu_ms_per_job") or {}).items():
        if v is not None:
            out.append(f"  {k}: the host's side of the path (agent process with its start-up, + sshd over SSH; not its slots): {v:.1f} ms CPU per job"
                       + (" (a floor: read from sshd's reaped children, which may not all be reaped yet)" if k.endswith("ssh") else ""))
    out.append(f"  load average at the end: {', '.join(f'{x:.1f}' for x in res.get('load_average') or [])} (other processes share these cores: wall figures are noisy, CPU figures less so)")
    out.append("")
    out.append(table(["ratio", "value"], [[k, "-" if v is None else f"{v:.2f}x"] for k, v in res["ratios"].items()]))
    return "\n".join(out)
