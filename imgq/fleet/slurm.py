"""Agents as Slurm jobs: ``imgq work --slurm N`` (one ``srun`` child per agent) and
``--slurm N --sbatch`` (one array job). Slurm places the agents; the agents dial back to
the coordinator over TCP, so this module only starts, watches and cancels jobs: it is
given the agent's command line and the environment to start it with, and knows nothing
of frames, secrets or sockets.

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

State. ``SlurmJobs.poll()`` asks ``squeue`` once for every agent of the run (by job
name, ``-t all`` so a job that ended recently still shows how) and folds in what each
srun said and how it exited: each ``AgentJob`` is ``starting`` (submitted, not yet seen),
``pending`` (with Slurm's reason: Resources, Priority, ...), ``running``, or ``ended``
with why (cancelled, time limit, preempted, node failure, out of memory, srun's last
words). Slurm forgets an ended job after ``MinJobAge`` (300 s by default); an ended agent
stays ended here.

Inside the job the agent's slots default to the CPUs Slurm gave it (``cpus_from_env``).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from imgq.config import SlurmSettings
from imgq.errors import SlurmError, UsageError

PDEATHSIG = signal.SIGTERM  # srun catches it and cancels its job at once; after SIGKILL Slurm's timeouts do, ~14 s later
COMMAND_TIMEOUT = 30.0  # sbatch, squeue, scancel
OUTPUT_LINES = 20  # the last lines of each srun's output kept for "ended, and why"

# Options the launcher sets itself (a --slurm-arg giving them is refused): the job name
# finds and cancels the run's jobs, one task is one agent, --export carries the secret.
RESERVED = {
    "-J": "--job-name", "--job-name": "--job-name", "-a": "--array", "--array": "--array",
    "-n": "--ntasks", "--ntasks": "--ntasks", "--export": "--export", "--parsable": "--parsable",
}

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT", "POWER_UP_NODE"}
RUNNING = {"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
ENDED_WHY = {  # Slurm's end states, in words
    "COMPLETED": "exited", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "hit its time limit",
    "PREEMPTED": "preempted", "NODE_FAIL": "its node failed", "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "passed its deadline", "OUT_OF_MEMORY": "ran out of memory", "COMPLETING": "ending",
    "REVOKED": "revoked",
}

_QUEUED = re.compile(r"\bjob (\d+) queued and waiting for resources")
_ALLOCATED = re.compile(r"\bjob (\d+) has been allocated resources")


@dataclasses.dataclass
class SlurmOptions:
    """``imgq work --slurm N [--slurm-arg ARG]... [--sbatch]``."""

    agents: int
    args: tuple[str, ...] = ()  # extra srun/sbatch options, after the [slurm] table's
    sbatch: bool = False


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


def cpus_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """Inside a Slurm job, the CPUs it was given (``--cpus-per-task``, else the CPUs of
    this node allocated to the job); None outside one."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return None
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        try:
            n = int(env.get(key, ""))
        except ValueError:
            continue
        if n > 0:
            return n
    return None


def new_run_id() -> str:
    return secrets.token_hex(4)


def require_commands(sbatch: bool) -> None:
    """A clear usage error where Slurm's client commands are not installed."""
    need = ("sbatch" if sbatch else "srun", "squeue", "scancel")
    absent = [c for c in need if shutil.which(c) is None]
    if absent:
        raise UsageError(f"--slurm: {', '.join(absent)} not found on PATH (Slurm's client commands, e.g. the slurm-client package)")


# --- one agent ------------------------------------------------------------------------


@dataclasses.dataclass
class AgentJob:
    """One agent's job as last seen."""

    index: int  # K of imgq-RUN-K, or the array task
    name: str
    job_id: str | None = None  # "1234", or "1234_5" for an array task
    state: str = "starting"  # starting | pending | running | ended
    reason: str = ""  # pending: Slurm's reason; ended: why, in words
    slurm_state: str = ""  # squeue's %T, as last seen
    slurm_reason: str = ""  # squeue's %r, as last seen (TimeLimit, NodeDown, ...)
    exit_status: int | None = None  # srun's, once it has exited
    cancelled_here: bool = False  # cancel_all cancelled it (its end, if Slurm says no other, is that)
    proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)
    output: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=OUTPUT_LINES), repr=False)

    def describe(self) -> str:
        """``running``, ``pending (Resources)``, ``ended: cancelled``: for status and logs."""
        if self.state == "pending" and self.reason:
            return f"pending ({self.reason})"
        if self.state == "ended" and self.reason:
            return f"ended: {self.reason}"
        return self.state

    def last_words(self) -> str:
        lines = [ln for ln in list(self.output) if ln.strip()]
        return lines[-1].strip()[:300] if lines else ""

    def _seen(self, job_id: str, slurm_state: str, reason: str) -> None:
        if self.state == "ended":
            # ended stays ended; "ending" (COMPLETING) becomes how it ended once Slurm says
            if slurm_state != self.slurm_state and slurm_state not in PENDING | RUNNING | {"COMPLETING"}:
                self.slurm_state = slurm_state
                self.slurm_reason = reason if reason not in ("None", "(null)") else self.slurm_reason
                self._end()
            return
        self.job_id = job_id
        self.slurm_state = slurm_state
        self.slurm_reason = reason if reason not in ("None", "(null)") else ""
        if slurm_state in PENDING:
            self.state, self.reason = "pending", reason if reason not in ("None", "(null)") else ""
        elif slurm_state in RUNNING:
            self.state, self.reason = "running", ""
        else:
            self._end()

    def _end(self) -> None:
        why = ENDED_WHY.get(self.slurm_state, self.slurm_state.lower() or "")
        if self.cancelled_here and self.slurm_state in ("", "PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            # our own cancel ended it and its srun exited before squeue showed CANCELLED (or
            # the job left squeue first, as under load): say so, not "ending" for good
            why = "cancelled"
        # Slurm's reason adds to a failure (NodeDown); on a cancelled job it is the stale
        # pending reason (Resources), and a state that says it already needs no echo
        telling = self.slurm_reason and self.slurm_state not in ("CANCELLED", "COMPLETED") and self.slurm_reason.lower() not in why.replace(" ", "")
        extra = [self.slurm_reason] if telling else []
        if self.exit_status is not None:
            extra.append(f"srun exit status {self.exit_status}")
        words = self.last_words()
        if words:
            extra.append(words)
        if not why:
            why = "srun exited" if self.exit_status is not None else "gone from the queue"
        self.state, self.reason = "ended", why + (f" ({'; '.join(extra)})" if extra else "")


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
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)  # srun cancels its job (pending ones too)
            except ProcessLookupError:
                pass
        if self.mode == "sbatch" and self.array_id:
            ids = [self.array_id]
        else:
            ids = sorted({j.job_id for j in self.jobs if j.job_id and j.state != "ended"})
        if ids and shutil.which("scancel"):
            r = _run(["scancel", *ids], env=self.env)
            if r.returncode != 0 and "Invalid job id" not in r.stderr:
                raise SlurmError(f"scancel {' '.join(ids)} failed: {_said(r)}")
        deadline = time.monotonic() + timeout
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


def agent_label(env: Mapping[str, str] | None = None) -> str | None:
    """Inside a Slurm job, the name an agent goes by: ``slurm:JOB`` (``slurm:ARRAY_TASK``
    for an array task), the id ``SlurmJobs.ids()`` gives, so a roster entry and its job
    are one; None outside a job."""
    env = os.environ if env is None else env
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"slurm:{array}_{task}"
    job = env.get("SLURM_JOB_ID")
    return f"slurm:{job}" if job else None


# --- the fleet's launcher -----------------------------------------------------------------


class SlurmLauncher:
    """``imgq work --slurm N``: the coordinator's launcher (``FleetOptions.launcher``).

    ``start(listener)`` once the coordinator listens: the agents' command line is
    ``listener.agent_argv(imgq)`` and their environment ``listener.agent_env()`` (address,
    secret, certificate pin), passed to srun/sbatch in the environment only. ``tick()``
    every loop of the coordinator: at most every ``poll_seconds`` one squeue, and a report
    ``("slurm", "slurm:JOBID", job id, state, reason)`` for each agent whose job's state
    changed.
    ``stop()`` when the run ends: every job cancelled. Call all three from the
    coordinator's own thread (srun's parent-death signal is tied to it)."""

    def __init__(self, opts: SlurmOptions, settings: SlurmSettings | None = None, *, imgq: Sequence[str] | None = None,
                 base_env: Mapping[str, str] | None = None, poll_seconds: float = 2.0, run_id: str | None = None, output: str = "/dev/null"):
        self.opts, self.settings = opts, settings or SlurmSettings()
        self.imgq = tuple(imgq) if imgq else (sys.executable, "-m", "imgq")  # clusters share the coordinator's install
        self.base_env, self.poll_seconds, self.run_id, self.output = base_env, poll_seconds, run_id, output
        self.jobs: SlurmJobs | None = None
        self._said: dict[int, str] = {}
        self._polled = 0.0

    def start(self, listener) -> None:
        argv, env = listener.agent_argv(self.imgq), listener.agent_env()
        kw = dict(count=self.opts.agents, settings=self.settings, args=self.opts.args, env=env, base_env=self.base_env, run_id=self.run_id)
        self.jobs = SlurmJobs.sbatch(argv, output=self.output, **kw) if self.opts.sbatch else SlurmJobs.srun(argv, **kw)

    def tick(self) -> list[tuple]:
        now = time.monotonic()
        if self.jobs is None or now - self._polled < self.poll_seconds:
            return []
        self._polled = now
        try:
            jobs = self.jobs.poll()
        except SlurmError as e:
            return [("warning", f"slurm: {e}")]
        out = []
        for j in jobs:
            said = j.describe()
            if j.job_id is not None and self._said.get(j.index) != said:  # a job without an id yet has nothing to say
                self._said[j.index] = said
                out.append(("slurm", f"slurm:{j.job_id}", j.job_id, j.state, j.reason))
        return out

    def stop(self) -> None:
        if self.jobs is not None:
            self.jobs.cancel_all()
            self._polled = 0.0  # the next tick tells how each ended


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


def _read_output(job: AgentJob, lock: threading.Lock) -> None:
    """Keep the last lines srun (and the agent, through it) wrote; note the job id and a
    wait for resources from srun's own messages before squeue is asked."""
    assert job.proc is not None and job.proc.stdout is not None
    for raw in job.proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            job.output.append(line)
            m = _QUEUED.search(line)
            if m and job.state == "starting":
                job.job_id, job.state = m.group(1), "pending"
            m = _ALLOCATED.search(line)
            if m and job.state in ("starting", "pending"):
                job.job_id, job.state, job.reason = m.group(1), "running", ""
    job.proc.stdout.close()


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


def _newer(a: str, b: str) -> bool:
    def key(job_id: str) -> tuple[int, int]:
        head, _, tail = job_id.partition("_")
        return (int(head) if head.isdigit() else -1, int(tail) if tail.isdigit() else -1)

    return key(a) > key(b)
