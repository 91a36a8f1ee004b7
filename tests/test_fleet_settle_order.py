"""The order in which the coordinator settles what its agents send back, checked on the
real thing: `imgq work --listen` and one `imgq agent --connect` over loopback, tiny jobs
(milliseconds each, so settles follow each other closely), real signals.

The coordinator sends an agent its next job as soon as a reply is read, before it stores
and settles that reply, and an arriving artifact's staged name is not fsynced into its
folder (the settle moves it onto its final name in that folder and fsyncs the folder).
What must hold whatever the order: a final name is durable before the journal records
it, and a job is settled once, whenever the coordinator dies.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import imgq_env, imgq_subprocess, query
from imgq import samples

pytestmark = pytest.mark.timeout(150)

OP = "fit:32x32"  # next to no rendering: the coordinator's own work is most of a job


def imgq(cwd, *args) -> subprocess.CompletedProcess:
    r = imgq_subprocess(*args, cwd=cwd, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def tiny_queue(cwd: Path, count: int) -> int:
    past = time.time() - 3600  # settled files: scan takes a file only once it stops changing
    for i in range(count):
        p = samples.make_photo(cwd / "inbox" / f"t{i:03d}.jpg", width=160, height=120, seed=7_000 + i)
        os.utime(p, (past, past))
    imgq(cwd, "scan", cwd / "inbox")
    imgq(cwd, "enqueue", "--op", OP)
    jobs = query(cwd / "imgq.db", "SELECT count(*) FROM jobs")[0][0]
    assert jobs == count
    return jobs


def start_run(cwd: Path, *prefix: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A coordinator (``prefix``: a tracer to run it under) and one agent of 2 slots."""
    (cwd / "run.env").unlink(missing_ok=True)
    coord = subprocess.Popen([*prefix, sys.executable, "-m", "imgq", "work", "--listen", "127.0.0.1", "--agent-file", cwd / "run.env", "--lease", "2"],
                             cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (cwd / "run.env").exists():
        if coord.poll() is not None or time.monotonic() > deadline:
            coord.kill()
            pytest.fail(f"the coordinator did not start listening: {coord.communicate()[1][-2000:]}")
        time.sleep(0.02)
    agent = subprocess.Popen([sys.executable, "-m", "imgq", "agent", "--slots", "2", "--workdir", cwd / "agents", "--secret-file", cwd / "run.env"],
                             cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return coord, agent


def finish(coord: subprocess.Popen, agent: subprocess.Popen) -> None:
    """Wait for a run started by ``start_run`` to drain and exit 0; kill what is left."""
    try:
        _, err = coord.communicate(timeout=120)
        agent.wait(30)
    finally:
        for p in (coord, agent):
            if p.poll() is None:
                p.kill()
    assert coord.returncode == 0, err


def done(db: Path) -> int:
    return query(db, "SELECT count(*) FROM jobs WHERE state = 'done'")[0][0]


def assert_recorded_artifacts_are_in_place(cwd: Path) -> int:
    """Every artifact the journal records is at its final name with the recorded bytes."""
    rows = query(cwd / "imgq.db", "SELECT a.path, a.sha256, a.bytes FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE j.state = 'done'")
    for path, sha256, size in rows:
        data = (cwd / "imgq-store" / path).read_bytes()  # FileNotFoundError: recorded before it was placed
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256), path
    return len(rows)


# --- a final name is durable before the journal records it ----------------------------------

_CALL = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD = re.compile(r"\w+<([^>]*)>")


def _calls(trace: str):
    """(name, args, result, start line, end line) of each system call in an ``strace -f
    -y`` log, a call split by another thread's (``<unfinished ...>`` / ``resumed>``) joined."""
    open_: dict[str, tuple[str, str, int]] = {}
    for i, line in enumerate(trace.splitlines()):
        m = _CALL.match(line)
        if m is None:
            continue
        pid = m.group(1)
        if m.group(2):  # the end of a call begun on an earlier line
            if pid in open_:
                name, args, start = open_.pop(pid)
                yield name, args + m.group(3), m.group(3).rpartition("= ")[2], start, i
            continue
        name, rest = m.group(4), m.group(5)
        if rest.endswith("<unfinished ...>"):
            open_[pid] = (name, rest[: -len("<unfinished ...>")], i)
        else:
            yield name, rest, rest.rpartition("= ")[2], i, i


def _moved_into_place(args: str, cwd: Path) -> tuple[Path, Path] | None:
    """(from, to) of a rename of a staged name onto a final one, else None."""
    paths, dirs = _STR.findall(args), _FD.findall(args)
    if len(paths) != 2:
        return None
    if len(dirs) == 2:  # renameat(dirfd<path>, "a", dirfd<path>, "b")
        src, dst = Path(dirs[0]) / paths[0], Path(dirs[1]) / paths[1]
    else:
        src, dst = cwd / paths[0], cwd / paths[1]
    if not src.name.endswith(".imgq-staged") or dst.name.startswith(".") or dst.name.endswith((".imgq-staged", ".imgq-tmp")):
        return None
    return src, dst


def test_a_final_name_is_durable_before_the_journal_records_it(tmp_path):
    """The coordinator's system calls, in order (strace): each artifact's staged name is
    renamed onto its final name, then its folder's fsync completes, and only after that
    is the database's WAL written with a page naming that final name (the commit that
    records it). An arrival's rename of its temporary file to the staged name is not
    fsynced into the folder; this is what makes that safe."""
    jobs = tiny_queue(tmp_path, 24)
    trace = tmp_path / "coordinator.strace"
    coord, agent = start_run(tmp_path, "strace", "-f", "-qq", "-y", "-s", "8192", "-o", str(trace),
                             "-e", "trace=rename,renameat,renameat2,fsync,fdatasync,pwrite64")
    finish(coord, agent)
    assert done(tmp_path / "imgq.db") == jobs
    store_dir = tmp_path / "imgq-store"
    calls = list(_calls(trace.read_text()))
    placed: dict[str, int] = {}  # final name (store-relative) -> the line its rename ended on
    durable: dict[str, int] = {}  # -> the line its folder's fsync (begun after that) ended on
    recorded: dict[str, int] = {}  # -> the line of the first WAL write naming it
    for name, args, result, start, end in calls:
        if name.startswith("rename") and result.startswith("0"):
            pair = _moved_into_place(args, tmp_path)
            if pair is not None:
                rel = pair[1].relative_to(store_dir).as_posix()
                assert rel not in placed, f"{rel} moved into place twice"
                placed[rel] = end
    for name, args, result, start, end in calls:
        if name in ("fsync", "fdatasync") and result.startswith("0"):
            fd = _FD.search(args)
            for rel, line in placed.items():
                if fd and rel not in durable and line < start and Path(fd.group(1)) == (store_dir / rel).parent:
                    durable[rel] = end
        elif name == "pwrite64" and "-wal>" in args.split(",", 1)[0]:
            for rel in placed:
                if rel not in recorded and rel in args:
                    recorded[rel] = start
    rows = [p for (p,) in query(tmp_path / "imgq.db", "SELECT path FROM artifacts")]
    assert sorted(placed) == sorted(rows) and len(rows) == jobs  # each artifact moved into place once
    assert sorted(recorded) == sorted(rows)  # (its path is in the page that records it)
    early = sorted(rel for rel in rows if rel not in durable or recorded[rel] < durable[rel])
    assert early == [], f"recorded before its folder was fsynced after the rename: {early}"
    assert all(placed[rel] < recorded[rel] for rel in rows)
    assert assert_recorded_artifacts_are_in_place(tmp_path) == jobs


# --- a coordinator killed while it settles --------------------------------------------------


def test_a_coordinator_killed_while_settling_records_each_job_once_with_its_files(tmp_path):
    """SIGKILL of the coordinator while replies are being stored and settled (tiny jobs:
    it settles every few milliseconds), three times at different points: after each kill
    every job the journal calls done has its artifact at its final name with the recorded
    bytes; a last run finishes the queue with each job done exactly once, and no staged
    or temporary file is left in the store."""
    jobs = tiny_queue(tmp_path, 120)  # a round ends a settle (up to 32 outcomes) past its target: 3 rounds stay short of the end
    db = tmp_path / "imgq.db"
    for round_ in range(3):
        coord, agent = start_run(tmp_path)
        try:
            target = done(db) + 4
            deadline = time.monotonic() + 60
            while done(db) < target:
                if coord.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"round {round_}: the coordinator ended or stalled before {target} jobs were done: {coord.communicate()[1][-2000:]}")
                time.sleep(0.005)
            os.kill(coord.pid, signal.SIGKILL)
            coord.wait(10)
            agent.wait(20)  # its connection closed: it exits
        finally:
            for p in (coord, agent):
                if p.poll() is None:
                    p.kill()
        assert done(db) < jobs, "the queue finished before the coordinator was killed: nothing was tested"
        assert_recorded_artifacts_are_in_place(tmp_path)
    time.sleep(2.1)  # the killed coordinator's leases expire
    coord, agent = start_run(tmp_path)
    finish(coord, agent)
    assert dict(query(db, "SELECT state, count(*) FROM jobs GROUP BY state")) == {"done": jobs}
    assert query(db, "SELECT job_id FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY job_id HAVING count(*) != 1") == []
    assert assert_recorded_artifacts_are_in_place(tmp_path) == jobs
    left = [p.name for p in (tmp_path / "imgq-store").rglob("*") if p.name.endswith((".imgq-staged", ".imgq-tmp"))]
    assert left == []
