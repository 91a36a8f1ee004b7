"""Workers killed for real: SIGKILL mid-job, SIGTERM while following."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import wait_for
from imgq import samples
from tests.conftest import imgq_env


def q(db_path, sql, *params):
    with sqlite3.connect(db_path, timeout=30) as c:
        return c.execute(sql, params).fetchall()


def start_work(tmp_path, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "imgq", "work", *args],
        cwd=tmp_path,
        env=imgq_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )




@pytest.fixture
def big_inbox(tmp_path):
    # large enough that a job takes a noticeable time, so a kill lands mid-job
    sample = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=4, size=(6000, 4000), with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    return sample


@pytest.mark.timeout(180)
def test_sigkill_mid_job_completes_exactly_once_after_lease_expiry(tmp_path, big_inbox, run_imgq, db_path):
    ids = run_imgq("scan", big_inbox).stdout.split()
    assert len(ids) == 4
    # a full-size output makes each job write a big artifact, so the kill can land mid-write
    run_imgq("enqueue", "--recipe", "default", "--op", "fit:6000x4000", "-", input="\n".join(ids))
    proc = start_work(tmp_path, "-j1", "--lease", "2", "--batch", "1")
    owner = wait_for(lambda: q(db_path, "SELECT lease_owner FROM jobs WHERE state = 'leased'"))[0][0]
    worker_pid = int(owner.split(":")[1])
    time.sleep(0.05)
    os.kill(worker_pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_jobs = q(db_path, "SELECT id FROM jobs WHERE state = 'leased'")
    assert killed_jobs, "the killed worker held a lease"

    store = tmp_path / "imgq-store"
    # no artifact under its final name is half-written: each one recorded or visible decodes
    for p in store.rglob("*.jpg"):
        if ".imgq-tmp" not in p.name:
            with Image.open(p) as im:
                im.load()

    done = run_imgq("work", "-j2", "--lease", "2", timeout=120)
    assert done.returncode == 0, done.stderr
    assert {s for (s,) in q(db_path, "SELECT state FROM jobs")} == {"done"}
    # each job completed exactly once, and the killed one was reclaimed after its lease expired
    for (job_id,) in q(db_path, "SELECT id FROM jobs"):
        assert q(db_path, "SELECT count(*) FROM events WHERE job_id = ? AND to_state = 'done'", job_id) == [(1,)]
    reclaimed = q(db_path, "SELECT detail FROM events WHERE job_id = ? AND to_state = 'leased' ORDER BY id", killed_jobs[0][0])
    assert len(reclaimed) == 2 and "expired" in reclaimed[1][0]
    assert not list(store.rglob("*.imgq-tmp*")), "temporary files of the killed worker were swept"
    for (path, w, h) in q(db_path, "SELECT path, width, height FROM artifacts"):
        with Image.open(store / path) as im:
            im.load()
            assert im.size == (w, h)


@pytest.mark.timeout(120)
def test_sigterm_stops_claiming_and_hands_back_unstarted_jobs(tmp_path, big_inbox, run_imgq, db_path):
    ids = run_imgq("scan", big_inbox).stdout.split()
    run_imgq("enqueue", "-", input="\n".join(ids))
    proc = start_work(tmp_path, "-j1", "--batch", "4", "--follow")
    wait_for(lambda: q(db_path, "SELECT 1 FROM jobs WHERE state = 'leased'"))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    states = [s for (s,) in q(db_path, "SELECT state FROM jobs")]
    assert "leased" not in states, "no job is left holding a lease after a graceful stop"
    assert states.count("ready") >= 1
    released = q(db_path, "SELECT count(*) FROM events WHERE detail LIKE 'released%'")[0][0]
    assert released == states.count("ready")
    # the run can be finished later; nothing was lost
    assert run_imgq("work", "-j2").returncode == 0
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"processed"}
