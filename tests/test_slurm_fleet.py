"""`imgq work --slurm N` end to end: real coordinators (the CLI in subprocesses), agents
started by the real one-node Slurm cluster of tests/slurmcluster.py, connecting back over
TLS (imgq/fleet/listen.py), real signals and scancel."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import imgq_env, imgq_subprocess, wait_for
from imgq import samples
from slurmcluster import slurm_cluster  # noqa: F401
from test_connect_back import SLOW_OPS, assert_each_job_done_exactly_once, done_by, query, queue_slow_jobs, slow_inbox, status  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def imgq(cwd, *args, timeout=180) -> subprocess.CompletedProcess:
    return imgq_subprocess(*args, cwd=cwd, timeout=timeout)


def start(cwd: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgq", *map(str, args)], cwd=cwd, env=imgq_env(), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def slurm_hosts(db: Path) -> list[str]:
    return [h for (h,) in query(db, "SELECT name FROM hosts WHERE name LIKE 'slurm:%' ORDER BY name")]


@pytest.fixture
def cluster(slurm_cluster):
    yield slurm_cluster
    slurm_cluster.cancel_all()


def test_the_pipeline_through_slurm_agents_matches_local_byte_for_byte(cluster, tmp_path):
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(1200, 900))
    runs = {}
    for name, args in (("local", ["-j", "2"]), ("slurm", ["--slurm", "2", "--listen", "127.0.0.1"])):
        cwd = tmp_path / name
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        assert imgq(cwd, "enqueue").returncode == 0
        assert imgq(cwd, "enqueue", "--op", "web|sharpness:1.5|gaussian:1.5").returncode == 0
        r = imgq(cwd, "work", "--drain", *args)
        assert r.returncode == 1, r.stderr  # the truncated JPEG fails, on both
        rows = query(cwd / "imgq.db", "SELECT f.path, a.name, a.path FROM artifacts a JOIN files f ON f.id = a.file_id")
        runs[name] = {(p, n): (cwd / "imgq-store" / ap).read_bytes() for p, n, ap in rows}
        if name == "slurm":
            db = cwd / "imgq.db"
            hosts = slurm_hosts(db)
            assert len(hosts) == 2 and all(re.fullmatch(r"slurm:\d+", h) for h in hosts), hosts
            assert all(done_by(db, h) > 0 for h in hosts)
            for h in hosts:  # each job's end is said (its start too, if a poll saw it running)
                assert re.search(rf"^imgq: {h} ended: (exited|cancelled)", r.stderr, re.M), r.stderr
            assert not cluster.squeue()  # the run cancelled its jobs
    assert runs["slurm"].keys() == runs["local"].keys() and len(runs["local"]) >= 15
    assert [k for k in runs["local"] if runs["local"][k] != runs["slurm"][k]] == []


def test_scancel_of_one_agent_mid_run_its_jobs_finish_elsewhere_exactly_once(cluster, tmp_path, slow_inbox):
    total = queue_slow_jobs(tmp_path, slow_inbox)
    db = tmp_path / "imgq.db"
    # leases far longer than the test: jobs come back only because the loss was noticed
    p = start(tmp_path, "work", "--drain", "--slurm", "2", "--listen", "127.0.0.1", "--lease", "300", "--prefetch", "1")
    try:
        wait_for(lambda: len(hosts := slurm_hosts(db)) == 2 and all(done_by(db, h) for h in hosts), timeout=120, step=0.2)
        doomed, survivor = slurm_hosts(db)
        held = query(db, "SELECT count(*) FROM jobs WHERE state = 'leased' AND host = ?", (doomed,))[0][0]
        fault = time.time()
        assert cluster.run("scancel", doomed.split(":")[1]).returncode == 0
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert time.time() - fault < 120  # not waiting out a 300 s lease
    assert held >= 1
    assert_each_job_done_exactly_once(db)
    later = query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done' AND at > ?", (fault + 2,))
    assert later in ([(survivor,)], [])
    assert done_by(db, doomed) + done_by(db, survivor) >= total - 2
    assert re.search(rf"{doomed} ended: cancelled", err), err
    assert status(tmp_path)[doomed]["state"] == "benched"
    assert not cluster.squeue()


def test_sigkill_of_the_coordinator_empties_the_queue_and_a_new_run_redoes_nothing(cluster, tmp_path, slow_inbox):
    assert imgq(tmp_path, "scan", slow_inbox).returncode == 0
    assert imgq(tmp_path, "enqueue", "--op", SLOW_OPS[0]).returncode == 0  # one slow job a photo: the rerun stays short
    db = tmp_path / "imgq.db"
    p = start(tmp_path, "work", "--follow", "--slurm", "2", "--listen", "127.0.0.1", "--lease", "5")  # its leases lapse soon after it dies
    try:
        wait_for(lambda: len(hosts := slurm_hosts(db)) == 2 and all(done_by(db, h) for h in hosts), timeout=120, step=0.2)
        assert len([j for j in cluster.squeue() if j["state"] == "RUNNING"]) == 2
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        killed = time.monotonic()
        wait_for(lambda: not cluster.squeue(), timeout=5, step=0.1)
        assert time.monotonic() - killed < 5
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    done_before = query(db, "SELECT count(*) FROM jobs WHERE state = 'done'")[0][0]
    assert done_before >= 2
    r = imgq(tmp_path, "work", "--drain", "-j", "2")  # takes over what the killed run held once its leases lapse
    assert r.returncode == 0, r.stderr
    assert_each_job_done_exactly_once(db)


def test_sbatch_agents_work_the_queue_and_are_cancelled_at_the_end(cluster, tmp_path):
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(640, 480), with_broken=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue").returncode == 0
    r = imgq(tmp_path, "work", "--drain", "--slurm", "2", "--sbatch", "--listen", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    hosts = slurm_hosts(db)
    assert hosts and all(re.fullmatch(r"slurm:\d+_[01]", h) for h in hosts), hosts
    assert_each_job_done_exactly_once(db)
    wait_for(lambda: not cluster.squeue(), timeout=15, step=0.1)


def test_a_cluster_too_full_for_the_agents_says_so_and_local_workers_carry_on(cluster, tmp_path):
    hog = cluster.run("sbatch", "--parsable", "--job-name", "hog", "--cpus-per-task", str(cluster.cpus), "--output", "/dev/null", "--wrap", "sleep 600")
    assert hog.returncode == 0, hog.stderr
    wait_for(lambda: [j for j in cluster.squeue(name="hog") if j["state"] == "RUNNING"], timeout=30, step=0.1)
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=1, size=(640, 480), with_broken=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue").returncode == 0
    r = imgq(tmp_path, "work", "--drain", "--slurm", "1", "-j", "1", "--listen", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    # pending (with Slurm's reason if the scheduler looked before the local worker was done)
    assert re.search(r"^imgq: slurm:(\d+) pending(: Resources|: Priority)?$", r.stderr, re.M), r.stderr
    assert re.search(r"^imgq: slurm:\d+ ended: cancelled", r.stderr, re.M), r.stderr
    assert_each_job_done_exactly_once(tmp_path / "imgq.db")
    wait_for(lambda: [j["name"] for j in cluster.squeue()] == ["hog"], timeout=15, step=0.1)  # the pending agent was cancelled


def test_status_shows_a_pending_agents_job_and_how_it_ended(cluster, tmp_path):
    hog = cluster.run("sbatch", "--parsable", "--job-name", "hog", "--cpus-per-task", str(cluster.cpus), "--output", "/dev/null", "--wrap", "sleep 600")
    assert hog.returncode == 0, hog.stderr
    wait_for(lambda: [j for j in cluster.squeue(name="hog") if j["state"] == "RUNNING"], timeout=30, step=0.1)
    p = start(tmp_path, "work", "--follow", "--slurm", "1", "--listen", "127.0.0.1")
    try:
        def pending():
            if not (tmp_path / "imgq.db").exists():
                return None
            fleet = status(tmp_path)
            return [(h, f) for h, f in fleet.items() if h.startswith("slurm:") and re.fullmatch(r"slurm job \d+ pending: (Resources|Priority)", f["reason"] or "")]

        ((name, row),) = wait_for(pending, timeout=60, step=0.3)
        assert row["state"] == "new" and name == f"slurm:{row['reason'].split()[2]}"
        assert name in imgq(tmp_path, "status").stdout
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    after = status(tmp_path)[name]
    assert after["state"] == "removed" and re.fullmatch(r"slurm job \d+ ended: cancelled.*", after["reason"]), after
    wait_for(lambda: [j["name"] for j in cluster.squeue()] == ["hog"], timeout=15, step=0.1)


def test_run_with_slurm_agents_processes_archives_and_collects(cluster, tmp_path):
    """`imgq run --slurm 1`: the work step on one Slurm agent (its job sized by [slurm] in
    imgq.toml), then this machine archives and collects; the agent's job ends with the step."""
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=2, size=(640, 480), with_broken=False,
                               with_duplicate=False, with_rotated=False, with_loose=False)
    originals = {p.name: p.read_bytes() for p in inbox.root.rglob("*.jpg")}
    dest = tmp_path / "A"
    dest.mkdir()
    (tmp_path / "imgq.toml").write_text("[slurm]\ncpus_per_task = 2\n")
    r = imgq(tmp_path, "run", inbox, "--to", dest, "--slurm", "1", "--listen", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    [host] = slurm_hosts(db)
    assert sorted(r.stdout.split()) == sorted(i for (i,) in query(db, "SELECT id FROM files"))
    assert_each_job_done_exactly_once(db)
    assert query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done'") == [(host,)]
    assert query(db, "SELECT slots FROM hosts WHERE name = ?", (host,)) == [(2,)]  # the [slurm] table's cpus_per_task
    assert re.search(rf"^imgq: work: {host} ended: (exited|cancelled)", r.stderr, re.M), r.stderr
    assert set(s for (s,) in query(db, "SELECT state FROM files")) == {"collected"}
    assert not [q for q in inbox.root.rglob("*") if q.is_file()]
    assert {q.name: q.read_bytes() for q in dest.rglob("*.jpg") if q.name in originals} == originals
    wait_for(lambda: not cluster.squeue(), timeout=15, step=0.1)  # the run cancelled its job
