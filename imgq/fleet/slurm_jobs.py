"""Starting, watching and cancelling the agents' Slurm jobs: ``SlurmJobs`` (split out of
``imgq.fleet.slurm``, which re-exports it), the options and environment each job gets,
and the calls to srun, sbatch, squeue and scancel.

srun mode (the default). Each agent is one ``srun --job-name imgq-RUN-K --ntasks 1 ...
-- COMMAND`` child of the coordinator. srun is the job's handle: while it runs, the job
runs; it exits when the job ends, with the reason on its stderr (kept, the last lines).
It is started

- with ``PR_SET_PDEATHSIG`` = SIGTERM, so it is told to stop when the coordinator dies,
  even by SIGKILL: srun then cancels its job, pending or running, at once (a srun killed
  with SIGKILL instead leaves its job to Slurm's timeouts: measured 14 s, during which a
  pending job even starts, with nobody to serve; so the signal is one srun catches). It
  is sent when the *thread* that started srun ends: start agents from the thread that
  lives as long as they should (the coordinator's loop);
- in a session of its own, so a Ctrl-C on the terminal reaches the coordinator alone (which
  then cancels its jobs in order);
- with an environment cleaned of inherited ``SLURM_*`` variables except ``SLURM_CONF``:
  inside an allocation they make srun start a step of *that* job instead of a job of its
  own, and ``SLURM_LABELIO`` prefixes every output line. The secret the agent needs
  travels in this environment (srun and sbatch export it to the job), never in argv,
  which ``ps`` shows to every user.

sbatch mode. ``sbatch --parsable --array=0-(N-1) --job-name imgq-RUN`` with a two-line
script on sbatch's stdin that ``exec``s the agent: the agents do not depend on a child of
the coordinator (long runs, sites that dislike srun children), and ``cancel_all`` is one
``scancel`` of the array. A coordinator killed with SIGKILL leaves them queued: the
agents exit when they cannot reach it (the transport's job), and ``scancel --name`` does
the rest.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from imgq.config import SlurmSettings
from imgq.errors import SlurmError, UsageError
from imgq.fleet.slurm_state import AgentJob, _newer, _read_output

PDEATHSIG = signal.SIGTERM  # srun catches it and cancels its job at once; after SIGKILL Slurm's timeouts do, ~14 s later
COMMAND_TIMEOUT = 30.0  # sbatch, squeue, scancel
SRUN_GRACE = 5.0  # cancel_all: how long a cancelled job's srun gets to exit before its SIGTERM

# Options the launcher sets itself (a --slurm-arg giving them is refused): the job name
# finds and cancels the run's jobs, one task is one agent, --export carries the secret.
RESERVED = {
    "-J": "--job-name", "--job-name": "--job-name", "-a": "--array", "--array": "--array",
    "-n": "--ntasks", "--ntasks": "--ntasks", "--export": "--export", "--parsable": "--parsable",
}


def check_args(args: Iterable[str]) -> tuple[str, ...]:
    """``--slurm-arg`` values as they go to srun/sbatch: each one option (``--qos=high``,
    ``--constraint=avx2``), one argv element, never through a shell."""
    out = []
    for a in args:
        if not a.startswith("-") or a in ("-", "--"):
            raise UsageError(f"--slurm-arg {a!r}: not an option of srun or sbatch (give each option with its value, e.g. --slurm-arg=--qos=high)")
        name = a.split("=", 1)[0]
        if name in RESERVED or (len(name) > 2 and not name.startswith("--") and name[:2] in RESERVED):
            raise UsageError(f"--slurm-arg {a!r}: imgq sets {RESERVED.get(name, RESERVED.get(name[:2]))} itself (one task per agent, named for the run, the environment exported)")
        out.append(a)
    return tuple(out)


def job_options(settings: SlurmSettings, args: Sequence[str] = ()) -> list[str]:
    """The options every agent's job gets: one task on one node, the ``[slurm]`` table,
    then ``--slurm-arg`` (later wins in Slurm's parsing)."""
    out = ["--ntasks=1", "--nodes=1"]
    for key, flag in (("partition", "--partition"), ("time", "--time"), ("account", "--account"), ("cpus_per_task", "--cpus-per-task"), ("mem", "--mem")):
        value = getattr(settings, key)
        if value is not None:
            out.append(f"{flag}={value}")
    return out + list(args)


def clean_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` without the ``SLURM_*`` variables a coordinator may have inherited (they
    would make srun run inside that allocation; SLURM_LABELIO garbles output), except
    ``SLURM_CONF``, which names the cluster; then ``extra`` (the agent's secret)."""
    env = {k: v for k, v in base.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(extra or {})
    return env


def new_run_id() -> str:
    return secrets.token_hex(4)


def require_commands(sbatch: bool) -> None:
    """A clear usage error where Slurm's client commands are not installed."""
    need = ("sbatch" if sbatch else "srun", "squeue", "scancel")
    absent = [c for c in need if shutil.which(c) is None]
    if absent:
        raise UsageError(f"--slurm: {', '.join(absent)} not found on PATH (Slurm's client commands, e.g. the slurm-client package)")


# --- the run's jobs ---------------------------------------------------------------------


class SlurmJobs:
    """The agents of one run, as Slurm jobs. Start with ``srun()`` or ``sbatch()``; then
    ``poll()`` (one squeue) and read ``jobs``; ``cancel_all()`` at the end (also on
    ``with`` exit)."""

    def __init__(self, run_id: str, mode: str, jobs: list[AgentJob], *, env: Mapping[str, str]):
        self.run_id, self.mode, self.jobs = run_id, mode, jobs
        self.env = dict(env)  # for squeue/scancel: SLURM_CONF, PATH; the same cleaned env
        self.array_id: str | None = None
        self._lock = threading.Lock()
        self.cancelled = False

    # --- starting -----------------------------------------------------------------------

    @classmethod
    def srun(cls, command: Sequence[str], *, count: int, settings: SlurmSettings | None = None, args: Sequence[str] = (),
             env: Mapping[str, str] | None = None, base_env: Mapping[str, str] | None = None, run_id: str | None = None) -> "SlurmJobs":
        """Start ``count`` agents, one srun child each, running ``command`` with the
        environment ``base_env`` (default: ours) cleaned, plus ``env``."""
        if count < 1:
            raise UsageError(f"--slurm {count}: at least one agent")
        require_commands(sbatch=False)
        run_id = run_id or new_run_id()
        full_env = clean_env(os.environ if base_env is None else base_env, env)
        opts = job_options(settings or SlurmSettings(), check_args(args))
        prctl = _prctl()
        parent = os.getpid()
        jobs = [AgentJob(k, f"imgq-{run_id}-{k}") for k in range(count)]
        self = cls(run_id, "srun", jobs, env=full_env)
        try:
            for job in jobs:
                argv = ["srun", f"--job-name={job.name}", *opts, "--", *command]
                job.proc = subprocess.Popen(
                    argv, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, preexec_fn=_die_with(prctl, parent),
                )
                threading.Thread(target=_read_output, args=(job, self._lock), name=f"srun-{job.name}", daemon=True).start()
        except BaseException:
            self.cancel_all()
            raise
        return self

    @classmethod
    def sbatch(cls, command: Sequence[str], *, count: int, settings: SlurmSettings | None = None, args: Sequence[str] = (),
               env: Mapping[str, str] | None = None, base_env: Mapping[str, str] | None = None, run_id: str | None = None,
               output: str = "/dev/null") -> "SlurmJobs":
        """Submit ``count`` agents as one array job whose script execs ``command``;
        ``output`` is sbatch's --output pattern for the agents' stdout and stderr."""
        if count < 1:
            raise UsageError(f"--slurm {count}: at least one agent")
        require_commands(sbatch=True)
        run_id = run_id or new_run_id()
        full_env = clean_env(os.environ if base_env is None else base_env, env)
        opts = job_options(settings or SlurmSettings(), check_args(args))
        name = f"imgq-{run_id}"
        argv = ["sbatch", "--parsable", f"--array=0-{count - 1}", f"--job-name={name}", f"--output={output}", *opts]
        r = _run(argv, env=full_env, input=batch_script(command))
        if r.returncode != 0:
            raise SlurmError(f"sbatch refused the agents' array job: {_said(r)}")
        array_id = r.stdout.strip().split(";")[0]
        if not array_id.isdigit():
            raise SlurmError(f"sbatch --parsable printed {r.stdout.strip()!r}, not a job id")
        self = cls(run_id, "sbatch", [AgentJob(k, name, job_id=f"{array_id}_{k}") for k in range(count)], env=full_env)
        self.array_id = array_id
        return self

    # --- watching -----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return sorted({j.name for j in self.jobs})

    def ids(self) -> list[str | None]:
        return [j.job_id for j in self.jobs]

    def poll(self) -> list[AgentJob]:
        """Ask squeue once about every agent of the run and fold in how each srun
        exited; return ``jobs``."""
        rows = self._squeue()
        with self._lock:
            for job in self.jobs:
                exited = job.proc.poll() if job.proc is not None else None
                newly_exited = exited is not None and job.exit_status is None
                if newly_exited:
                    job.exit_status = exited
                if self.mode == "sbatch":  # a task not yet split off the array shows as the array's id
                    row = rows.get(job.job_id) or rows.get(self.array_id or "")
                else:
                    row = rows.get(job.name)
                if row is not None:
                    job._seen(row[0] if self.mode == "srun" else job.job_id, row[1], row[2])
                elif self.mode == "sbatch" and job.state == "running":
                    job.slurm_state = ""  # once seen, now gone from squeue -t all: it ended long ago
                    job._end()
                if newly_exited or (exited is not None and job.state != "ended"):
                    job._end()  # srun is gone: so is its job (squeue may lag behind)
        return self.jobs

    def _squeue(self) -> dict[str, tuple[str, str, str]]:
        """{name or array task id: (job id, state, reason)}; the newest job of a name wins."""
        argv = ["squeue", "--noheader", "--me", "--states=all", "--array", "--format=%i|%j|%T|%r", f"--name={','.join(self.names)}"]
        r = _run(argv, env=self.env)
        if r.returncode != 0:
            raise SlurmError(f"squeue failed: {_said(r)}")
        rows: dict[str, tuple[str, str, str]] = {}
        for line in r.stdout.splitlines():
            parts = line.split("|", 3)
            if len(parts) != 4:
                continue
            job_id, name, state, reason = (p.strip() for p in parts)
            key = job_id if self.mode == "sbatch" else name
            if key not in rows or _newer(job_id, rows[key][0]):
                rows[key] = (job_id, state, reason)
        return rows

    # --- stopping -----------------------------------------------------------------------

    def cancel_all(self, timeout: float = 15.0) -> None:
        """Cancel every agent's job, pending or running, wait (up to ``timeout``) for the
        sruns to exit, and poll once more. Safe to call twice."""
        self.cancelled = True
        for j in self.jobs:
            if j.state != "ended":
                j.cancelled_here = True
        live = [j.proc for j in self.jobs if j.proc is not None and j.proc.poll() is None]
        # scancel first, then srun's SIGTERM for what is left: a signalled srun ends its
        # job itself, and Slurm then records it FAILED (JobLaunchFailure) instead of
        # CANCELLED whenever srun gets there before scancel (1 run in 6 under load)
        if self.mode == "sbatch" and self.array_id:
            ids = [self.array_id]
        else:
            ids = sorted({j.job_id for j in self.jobs if j.job_id and j.state != "ended"})
        if ids and shutil.which("scancel"):
            r = _run(["scancel", *ids], env=self.env)
            if r.returncode != 0 and "Invalid job id" not in r.stderr:
                raise SlurmError(f"scancel {' '.join(ids)} failed: {_said(r)}")
        deadline = time.monotonic() + timeout
        grace = min(deadline, time.monotonic() + (SRUN_GRACE if ids else 0.0))
        for p in live:  # cancelled jobs take their sruns with them
            try:
                p.wait(timeout=max(0.0, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in live:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)  # srun cancels its job (one still waiting for an id too)
                except ProcessLookupError:
                    pass
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # how each ended, while squeue still knows: past COMPLETING (Slurm's cleanup, a
        # second or two), so the run's last word is "cancelled", not "ending"
        settle = time.monotonic() + 5.0
        while True:
            try:
                jobs = self.poll()
            except SlurmError:
                break
            if time.monotonic() > settle or not any(j.slurm_state == "COMPLETING" for j in jobs):
                break
            time.sleep(0.2)

    def __enter__(self) -> "SlurmJobs":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel_all()


def batch_script(command: Sequence[str]) -> str:
    """The array job's script: exec the agent (its secret is in the exported environment)."""
    return "#!/bin/sh\n# an imgq agent, submitted by `imgq work --slurm N --sbatch`\nexec " + shlex.join(command) + "\n"


# --- helpers ------------------------------------------------------------------------------


def _prctl():
    """libc's prctl, looked up before any fork (the child only calls it)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: cancel_all still stops the jobs on a clean exit
        return None


def _die_with(prctl, parent: int):
    def preexec() -> None:
        if prctl is not None:
            prctl(1, int(PDEATHSIG))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the coordinator died before the line above
                os.kill(os.getpid(), PDEATHSIG)

    return preexec


def _run(argv: list[str], *, env: Mapping[str, str], input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, env=dict(env), input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {COMMAND_TIMEOUT:g} s (is slurmctld up?)") from None
    except FileNotFoundError:
        raise UsageError(f"--slurm: {argv[0]} not found on PATH (Slurm's client commands, e.g. the slurm-client package)") from None


def _said(r: subprocess.CompletedProcess) -> str:
    text = (r.stderr or r.stdout or "").strip().replace("\n", "; ")
    return text[:500] or f"exit status {r.returncode}"
