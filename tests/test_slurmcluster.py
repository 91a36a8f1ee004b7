"""The test cluster of tests/slurmcluster.py works the way the Slurm tests rely on: srun
runs a command on the node, sbatch queues a job squeue shows running, scancel ends it,
and a job asking for more CPUs than are free waits as PENDING."""

from __future__ import annotations

import os
import socket

import pytest

from conftest import wait_for
from slurmcluster import slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slow


def test_srun_runs_a_command_on_the_node(slurm_cluster):
    r = slurm_cluster.run("srun", "--job-name", "smoke-srun", "hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == socket.gethostname()
    # the cluster is configured through SLURM_CONF, exported for the session: nothing in /etc
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)


def test_sbatch_squeue_scancel(slurm_cluster):
    r = slurm_cluster.run("sbatch", "--parsable", "--job-name", "smoke-sbatch", "--output", "/dev/null", "--wrap", "sleep 300")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    running = wait_for(lambda: [j for j in slurm_cluster.squeue(name="smoke-sbatch") if j["state"] == "RUNNING"], timeout=30, step=0.1)
    assert [j["id"] for j in running] == [job]
    assert slurm_cluster.run("scancel", job).returncode == 0
    wait_for(lambda: not slurm_cluster.squeue(name="smoke-sbatch"), timeout=30, step=0.1)
    ended = slurm_cluster.squeue(all_states=True, name="smoke-sbatch")
    assert [(j["id"], j["state"]) for j in ended] == [(job, "CANCELLED")]


def test_a_job_larger_than_the_free_cpus_pends(slurm_cluster):
    hog = slurm_cluster.run("sbatch", "--parsable", "--job-name", "smoke-hog", "--cpus-per-task", str(slurm_cluster.cpus), "--output", "/dev/null", "--wrap", "sleep 300")
    assert hog.returncode == 0, hog.stderr
    try:
        wait_for(lambda: [j for j in slurm_cluster.squeue(name="smoke-hog") if j["state"] == "RUNNING"], timeout=30, step=0.1)
        small = slurm_cluster.run("sbatch", "--parsable", "--job-name", "smoke-small", "--output", "/dev/null", "--wrap", "sleep 300")
        assert small.returncode == 0, small.stderr
        wait_for(lambda: [j for j in slurm_cluster.squeue(name="smoke-small") if j["state"] == "PENDING" and j["reason"] in ("Resources", "Priority")], timeout=30, step=0.1)
    finally:
        slurm_cluster.cancel_all()
