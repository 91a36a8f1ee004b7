"""Agents as Slurm jobs (imgq/fleet/slurm.py) on the real one-node cluster of
tests/slurmcluster.py.

Until the connect-back transport is wired in, the "agent" each job runs is a small
Python program that writes what it was started with (argv, environment, the CPUs
``cpus_from_env`` finds) to a file named after its job id and then sleeps: what the
launcher promises is visible there and in squeue, and nothing here fakes Slurm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, imgq_env, wait_for
from imgq.config import SlurmSettings
from imgq.errors import UsageError
from imgq.fleet import slurm
from slurmcluster import slurm_cluster  # noqa: F401

AGENT = textwrap.dedent("""\
    import json, os, sys, time
    from imgq.fleet.slurm import agent_label, cpus_from_env
    out = os.path.join(sys.argv[1], os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ["SLURM_JOB_ID"])
    with open(out + ".tmp", "w") as f:
        json.dump({"argv": sys.argv, "env": dict(os.environ), "cpus": cpus_from_env(), "label": agent_label()}, f)
    os.rename(out + ".tmp", out + ".json")
    time.sleep(600)
""")


def agent_command(outdir: Path) -> list[str]:
    return [sys.executable, "-c", AGENT, str(outdir)]


def reports(outdir: Path, n: int) -> dict[str, dict]:
    """Wait for ``n`` agents to have written what they were started with."""
    return wait_for(lambda: (found := {p.stem: json.loads(p.read_text()) for p in outdir.glob("*.json")}) and len(found) >= n and found, timeout=60, step=0.1)


def states(jobs: slurm.SlurmJobs) -> list[str]:
    return [j.state for j in jobs.poll()]


def cmdlines() -> list[bytes]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except OSError:
                pass
    return out


@pytest.fixture
def outdir(tmp_path) -> Path:
    d = tmp_path / "agents"
    d.mkdir()
    return d


@pytest.fixture
def cluster(slurm_cluster):
    yield slurm_cluster
    slurm_cluster.cancel_all()  # whatever a failing test left behind


# --- on the cluster -----------------------------------------------------------------------


@pytest.mark.slow
def test_srun_agents_run_as_jobs_with_the_secret_in_their_environment_only(cluster, outdir):
    secret = "imgq-secret-" + os.urandom(8).hex()
    jobs = slurm.SlurmJobs.srun(agent_command(outdir), count=3, env={"IMGQ_AGENT_SECRET": secret}, base_env=imgq_env())
    with jobs:
        wait_for(lambda: states(jobs) == ["running"] * 3, timeout=60, step=0.1)
        ids = jobs.ids()
        assert len(set(ids)) == 3 and all(i and i.isdigit() for i in ids)
        queued = {j["name"]: j for j in cluster.squeue()}
        for k, job_id in enumerate(ids):
            row = queued[f"imgq-{jobs.run_id}-{k}"]
            assert (row["id"], row["state"]) == (job_id, "RUNNING")
        seen = reports(outdir, 3)
        assert sorted(seen) == sorted(ids)
        for job_id, r in seen.items():
            assert r["env"]["IMGQ_AGENT_SECRET"] == secret
            assert r["env"]["SLURM_JOB_ID"] == job_id
            assert r["argv"][1:] == [str(outdir)]
        # on no process's command line: not the sruns', not the agents', not slurmstepd's
        assert not [c for c in cmdlines() if secret.encode() in c]
    assert [j.state for j in jobs.jobs] == ["ended"] * 3  # cancel_all polled once more
    wait_for(lambda: not cluster.squeue(), timeout=30, step=0.1)
    ended = lambda: [j.describe() for j in jobs.poll()]  # noqa: E731
    wait_for(lambda: [d.split(" (")[0] for d in ended()] == ["ended: cancelled"] * 3, timeout=30, step=0.1, show=ended)


@pytest.mark.slow
def test_slurm_variables_of_the_coordinators_own_allocation_are_not_inherited(cluster, outdir):
    inside_a_job = imgq_env({"SLURM_JOB_ID": "999999", "SLURM_JOBID": "999999", "SLURM_LABELIO": "1", "SLURM_IMGQ_MARKER": "leaked"})
    # why it matters: srun with these runs (or fails to run) inside that other job
    r = subprocess.run(["srun", "true"], env=inside_a_job, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode != 0 and "999999" in r.stderr
    with slurm.SlurmJobs.srun(agent_command(outdir), count=1, base_env=inside_a_job) as jobs:
        (job_id, r), = reports(outdir, 1).items()
        assert job_id != "999999" and r["env"]["SLURM_JOB_ID"] == job_id
        assert "SLURM_IMGQ_MARKER" not in r["env"] and "SLURM_LABELIO" not in r["env"]
        assert r["env"]["SLURM_CONF"] == str(cluster.conf)
        assert jobs.poll()[0].state == "running"


@pytest.mark.slow
def test_the_agents_cpus_come_from_slurm(cluster, outdir):
    with slurm.SlurmJobs.srun(agent_command(outdir), count=2, settings=SlurmSettings(cpus_per_task=2), base_env=imgq_env()):
        assert sorted(r["cpus"] for r in reports(outdir, 2).values()) == [2, 2]
    plain = outdir / "plain"
    plain.mkdir()
    with slurm.SlurmJobs.srun(agent_command(plain), count=1, base_env=imgq_env()):
        (r,) = reports(plain, 1).values()
        assert r["cpus"] == 1  # no --cpus-per-task: the CPUs of the node allocated to it


@pytest.mark.slow
def test_an_agent_the_cluster_has_no_room_for_is_pending_then_runs(cluster, outdir):
    hog = cluster.run("sbatch", "--parsable", "--job-name", "hog", "--cpus-per-task", str(cluster.cpus), "--output", "/dev/null", "--wrap", "sleep 600")
    assert hog.returncode == 0, hog.stderr
    wait_for(lambda: [j for j in cluster.squeue(name="hog") if j["state"] == "RUNNING"], timeout=30, step=0.1)
    with slurm.SlurmJobs.srun(agent_command(outdir), count=1, base_env=imgq_env()) as jobs:
        # pending at once (srun's own words), with Slurm's reason once the scheduler has looked
        wait_for(lambda: states(jobs) == ["pending"] and jobs.jobs[0].reason in ("Resources", "Priority"), timeout=30, step=0.1)
        job = jobs.jobs[0]
        assert job.job_id
        assert job.describe() == f"pending ({job.reason})"
        assert "queued and waiting for resources" in "\n".join(job.output)
        assert not list(outdir.glob("*.json"))
        cluster.run("scancel", hog.stdout.strip())
        wait_for(lambda: states(jobs) == ["running"], timeout=30, step=0.1)
        assert list(reports(outdir, 1)) == [job.job_id]


@pytest.mark.slow
def test_scancel_of_one_agent_is_seen_as_ended_with_the_reason(cluster, outdir):
    with slurm.SlurmJobs.srun(agent_command(outdir), count=2, base_env=imgq_env()) as jobs:
        wait_for(lambda: states(jobs) == ["running", "running"], timeout=60, step=0.1)
        first, second = jobs.ids()
        assert cluster.run("scancel", first).returncode == 0
        wait_for(lambda: states(jobs) == ["ended", "running"], timeout=30, step=0.1)
        ended = jobs.jobs[0]
        # ended at once (COMPLETING is "ending"); why, once Slurm has finished it
        wait_for(lambda: jobs.poll()[0].reason.startswith("cancelled"), timeout=30, step=0.1)
        wait_for(lambda: jobs.poll()[0].exit_status is not None, timeout=30, step=0.1)
        assert ended.exit_status != 0 and ended.state == "ended"
        assert f"srun exit status {ended.exit_status}" in ended.reason
        assert jobs.jobs[1].job_id == second


COORDINATOR = textwrap.dedent("""\
    import sys, time
    from imgq.fleet.slurm import SlurmJobs
    jobs = SlurmJobs.srun([sys.executable, "-c", "import time; time.sleep(600)"], count=int(sys.argv[1]), run_id=sys.argv[2])
    while any(j.state == "starting" for j in jobs.poll()):
        time.sleep(0.1)
    print(" ".join(f"{j.job_id}:{j.state}" for j in jobs.jobs), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_sigkill_of_the_coordinator_leaves_no_job_in_the_queue(cluster):
    # five 1-CPU agents on a 4-CPU node: four run and one waits, and both kinds must go
    run_id = "k9" + os.urandom(3).hex()
    proc = subprocess.Popen([sys.executable, "-c", COORDINATOR, "5", run_id], env=imgq_env(), stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        line = proc.stdout.readline()
        seen = sorted(s.split(":")[1] for s in line.split())
        assert seen == ["pending"] + ["running"] * 4, line
        names = {j["name"] for j in cluster.squeue()}
        assert names == {f"imgq-{run_id}-{k}" for k in range(5)}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # srun, told by SIGTERM, cancels at once (0.1 s here); a srun killed outright would
        # leave its jobs to Slurm's timeouts (14 s here; a pending job starts meanwhile)
        # (this run's jobs: an earlier test's cancelled jobs may still be completing)
        ours = lambda: [j for j in cluster.squeue() if j["name"] in names]  # noqa: E731
        wait_for(lambda: not ours(), timeout=5, step=0.1, show=cluster.squeue)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sbatch_array_starts_n_agents_and_cancel_all_empties_the_queue(cluster, outdir):
    secret = "imgq-secret-" + os.urandom(8).hex()
    jobs = slurm.SlurmJobs.sbatch(agent_command(outdir), count=3, env={"IMGQ_AGENT_SECRET": secret}, base_env=imgq_env({"SLURM_JOB_ID": "999999"}))
    assert jobs.array_id and jobs.ids() == [f"{jobs.array_id}_{k}" for k in range(3)]
    wait_for(lambda: states(jobs) == ["running"] * 3, timeout=60, step=0.1)
    seen = reports(outdir, 3)
    assert sorted(seen) == ["0", "1", "2"]  # files named by array task
    for task, r in seen.items():
        assert r["env"]["IMGQ_AGENT_SECRET"] == secret
        assert r["env"]["SLURM_ARRAY_JOB_ID"] == jobs.array_id
        assert r["env"]["SLURM_JOB_NAME"] == f"imgq-{jobs.run_id}"
    assert not [c for c in cmdlines() if secret.encode() in c]
    jobs.cancel_all()
    wait_for(lambda: not cluster.squeue(), timeout=30, step=0.1)
    wait_for(lambda: states(jobs) == ["ended"] * 3, timeout=30, step=0.1)
    assert all(j.reason.startswith("cancelled") for j in jobs.jobs), [j.reason for j in jobs.jobs]


class Listener:
    """What the coordinator's connect-back listener gives a launcher: the agent's command
    line (here the recording program above, run with the ``imgq`` prefix the launcher
    chose) and the environment carrying the run's secret."""

    def __init__(self, outdir: Path, secret: str):
        self.outdir, self.secret = outdir, secret

    def agent_argv(self, imgq):
        assert tuple(imgq) == (sys.executable, "-m", "imgq")  # the coordinator's own install
        return [sys.executable, "-c", AGENT, str(self.outdir)]

    def agent_env(self):
        return {"IMGQ_AGENT_SECRET": self.secret}


@pytest.mark.slow
@pytest.mark.parametrize("sbatch", [False, True], ids=["srun", "sbatch"])
def test_the_launcher_reports_each_agents_job_by_the_name_the_agent_goes_by(cluster, outdir, sbatch):
    launcher = slurm.SlurmLauncher(slurm.SlurmOptions(agents=2, sbatch=sbatch), SlurmSettings(cpus_per_task=2), base_env=imgq_env(), poll_seconds=0)
    launcher.start(Listener(outdir, "s3cret-" + os.urandom(6).hex()))
    try:
        said: dict[str, tuple] = {}

        def running():
            for r in launcher.tick():
                assert r[0] == "slurm" and r[1] == f"slurm:{r[2]}"
                said[r[1]] = r
            return [r for r in said.values() if r[3] == "running"] if len(said) == 2 else None

        wait_for(lambda: (found := running()) and len(found) == 2, timeout=60, step=0.1)
        labels = {r["label"] for r in reports(outdir, 2).values()}
        assert set(said) == labels  # the label an agent reports is the launcher's name for its job
        assert {f"slurm:{i}" for i in launcher.jobs.ids()} == labels
        assert all(r["cpus"] == 2 for r in reports(outdir, 2).values())
        assert launcher.tick() == []  # nothing changed, nothing said
    finally:
        launcher.stop()
    wait_for(lambda: not cluster.squeue(), timeout=30, step=0.1)
    ended = wait_for(lambda: [r for r in launcher.tick() or [] if r[3] == "ended"] or None, timeout=10, step=0.2)
    assert ended and all(r[4].startswith("cancelled") for r in ended)


@pytest.mark.slow
def test_sbatch_refusal_is_a_named_error_with_slurms_reason(cluster, outdir):
    with pytest.raises(slurm.SlurmError, match="sbatch refused.*[Pp]artition"):
        slurm.SlurmJobs.sbatch(agent_command(outdir), count=1, settings=SlurmSettings(partition="nosuchpartition"), base_env=imgq_env())


# --- without the cluster --------------------------------------------------------------------


def test_options_come_from_the_table_then_the_command_line():
    s = SlurmSettings(partition="batch", time="2:00:00", account="lab", cpus_per_task=4, mem="4G")
    assert slurm.job_options(s, ["--qos=high", "--partition=gpu"]) == [
        "--ntasks=1", "--nodes=1", "--partition=batch", "--time=2:00:00", "--account=lab", "--cpus-per-task=4", "--mem=4G",
        "--qos=high", "--partition=gpu",
    ]
    assert slurm.job_options(SlurmSettings()) == ["--ntasks=1", "--nodes=1"]


@pytest.mark.parametrize("arg", ["--job-name=x", "-Jx", "-J", "--array=0-3", "--export=NONE", "--ntasks=2", "-n2", "--parsable", "qos=high", "-", "--"])
def test_slurm_args_the_launcher_owns_or_that_are_not_options_are_refused(arg):
    with pytest.raises(UsageError, match="--slurm-arg"):
        slurm.check_args([arg])


def test_clean_env_keeps_only_slurm_conf():
    env = slurm.clean_env({"PATH": "/bin", "SLURM_CONF": "/c", "SLURM_JOB_ID": "1", "SLURM_LABELIO": "1", "SBATCH_QOS": "q"}, {"IMGQ_AGENT_SECRET": "s"})
    assert env == {"PATH": "/bin", "SLURM_CONF": "/c", "SBATCH_QOS": "q", "IMGQ_AGENT_SECRET": "s"}


def test_cpus_from_env():
    assert slurm.cpus_from_env({}) is None
    assert slurm.cpus_from_env({"SLURM_CPUS_PER_TASK": "4"}) is None  # not inside a job
    assert slurm.cpus_from_env({"SLURM_JOB_ID": "3", "SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "8"}) == 4
    assert slurm.cpus_from_env({"SLURM_JOB_ID": "3", "SLURM_CPUS_ON_NODE": "2"}) == 2
    assert slurm.cpus_from_env({"SLURM_JOB_ID": "3", "SLURM_CPUS_ON_NODE": "x"}) is None


def test_agent_label():
    assert slurm.agent_label({}) is None
    assert slurm.agent_label({"SLURM_JOB_ID": "12"}) == "slurm:12"
    assert slurm.agent_label({"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm:12_3"


def test_batch_script_quotes_the_command():
    script = slurm.batch_script(["/opt/py thon", "-m", "imgq", "agent", "--connect", "10.0.0.1:4000"])
    assert script.startswith("#!/bin/sh\n")
    assert script.splitlines()[-1] == "exec '/opt/py thon' -m imgq agent --connect 10.0.0.1:4000"


@pytest.mark.slow
def test_an_agent_inside_a_slurm_job_offers_the_cpus_it_was_given(tmp_path):
    # the agent's hello (its first frame) states cores and slots: inside a job, Slurm's count
    from imgq.fleet import protocol

    env = imgq_env({"SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "3"})
    proc = subprocess.Popen([sys.executable, "-m", "imgq", "agent", "--workdir", str(tmp_path / "w")], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        header, _ = protocol.read_message(proc.stdout.read)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert header["type"] == "hello"
    assert (header["cores"], header["slots"]) == (3, 3)


def test_the_slurm_table_of_imgq_toml(tmp_path):
    from imgq.config import load_settings

    toml = tmp_path / "imgq.toml"
    toml.write_text('[slurm]\npartition = "batch"\ntime = "2:00:00"\naccount = "lab"\ncpus_per_task = 4\nmem = 4096\n')
    assert load_settings(toml).slurm == SlurmSettings(partition="batch", time="2:00:00", account="lab", cpus_per_task=4, mem="4096")
    assert load_settings(None).slurm == SlurmSettings()
    for bad, said in [('partiton = "x"', "unknown setting 'partiton'"), ("cpus_per_task = 0", "cpus_per_task"), ('cpus_per_task = "4"', "cpus_per_task"),
                      ('time = ""', "time"), ('mem = "--export=NONE"', "mem"), ("partition = 3", "partition")]:
        toml.write_text(f"[slurm]\n{bad}\n")
        with pytest.raises(UsageError, match=said):
            load_settings(toml)
    toml.write_text('slurm = "batch"\n')
    with pytest.raises(UsageError, match=r"\[slurm\] must be a table"):
        load_settings(toml)


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("args, said", [
    (["--slurm", "0"], "--slurm"),
    (["--slurm-arg=--qos=high"], "--slurm-arg goes with --slurm N"),
    (["--sbatch"], "--sbatch goes with --slurm N"),
    (["--slurm", "2", "--slurm-arg=--job-name=mine"], "imgq sets --job-name itself"),
    (["--slurm", "2", "--slurm-arg", "-Jmine"], "imgq sets --job-name itself"),
    (["--slurm", "2", "--sbatch", "--slurm-arg=--array=0-9"], "imgq sets --array itself"),
    (["--slurm", "2", "--slurm-arg", "qos=high"], "not an option of srun or sbatch"),
])
def test_slurm_options_asked_wrongly_are_usage_errors(run_imgq, args, said):
    r = run_imgq("work", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("imgq: error:") and said in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_bad_slurm_table_is_a_usage_error(run_imgq, tmp_path):
    (tmp_path / "imgq.toml").write_text("[slurm]\ncpus_per_task = 0\n")
    r = run_imgq("work", "--slurm", "1")
    assert r.returncode == 2 and "cpus_per_task" in r.stderr


def test_slurm_without_slurms_commands_says_what_is_missing(run_imgq, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run_imgq("work", "--slurm", "1", env={"PATH": str(empty)})
    assert r.returncode == 2
    assert "srun, squeue, scancel not found on PATH" in r.stderr
    r = run_imgq("work", "--slurm", "1", "--sbatch", env={"PATH": str(empty)})
    assert "sbatch, squeue, scancel not found on PATH" in r.stderr


@pytest.mark.parametrize("rows, said", [
    # squeue's own rows as Slurm 22.05 printed them here (a time limit takes ~90 s to see: Slurm's
    # smallest limit is a minute, checked every 30 s; the test cluster showed exactly these)
    ([("RUNNING", "None"), ("COMPLETING", "TimeLimit"), ("TIMEOUT", "TimeLimit")], "hit its time limit"),
    ([("RUNNING", "None"), ("COMPLETING", "TimeLimit")], "hit its time limit"),  # said while Slurm is still ending it
    ([("RUNNING", "None"), ("CANCELLED", "None")], "cancelled"),
    ([("PENDING", "Resources"), ("CANCELLED", "Resources")], "cancelled"),  # not for want of resources
    ([("RUNNING", "None"), ("NODE_FAIL", "NodeDown")], "its node failed (NodeDown)"),
    ([("RUNNING", "None"), ("OUT_OF_MEMORY", "OutOfMemory")], "ran out of memory"),
    ([("RUNNING", "None"), ("PREEMPTED", "None")], "preempted"),
])
def test_how_an_agents_job_ended_in_words(rows, said):
    job = slurm.AgentJob(0, "imgq-x-0")
    for state, reason in rows:
        job._seen("12", state, reason)
    assert (job.state, job.reason) == ("ended", said)
    assert job.describe() == f"ended: {said}"


def test_an_agent_ended_for_its_time_limit_is_said_so_when_srun_exits_before_squeue_knows():
    """srun can exit before squeue shows the job TIMEOUT (or even COMPLETING): slurmstepd's
    own line on srun's output says why (the words of Slurm 22.05's slurmstepd)."""
    job = slurm.AgentJob(0, "imgq-x-0")
    job._seen("12", "RUNNING", "None")
    job.output.append("slurmstepd: error: *** STEP 12.0 ON node1 CANCELLED AT 2026-11-30T02:31:07 DUE TO TIME LIMIT ***")
    job.exit_status = 0
    job._end()  # as SlurmJobs.poll does once srun has exited
    assert job.state == "ended" and job.reason.startswith("hit its time limit ("), job.reason
    job._seen("12", "TIMEOUT", "TimeLimit")  # squeue catches up: same words
    assert job.reason.startswith("hit its time limit")
