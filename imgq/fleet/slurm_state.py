"""Slurm jobs as imgq sees them (split out of ``imgq.fleet.slurm``): the job model
``AgentJob``, Slurm's states in words, what srun's own messages and squeue say of a
job, and what an agent reads of the job it runs in.

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
import dataclasses
import os
import re
import subprocess
import threading
from collections.abc import Mapping

OUTPUT_LINES = 20  # the last lines of each srun's output kept for "ended, and why"

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT", "POWER_UP_NODE"}
RUNNING = {"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
ENDED_WHY = {  # Slurm's end states, in words
    "COMPLETED": "exited", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "hit its time limit",
    "PREEMPTED": "preempted", "NODE_FAIL": "its node failed", "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "passed its deadline", "OUT_OF_MEMORY": "ran out of memory", "COMPLETING": "ending",
    "REVOKED": "revoked",
}

# what slurmstepd writes to srun's output when Slurm ends a step (``*** STEP 12.0 ON node
# CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***``): how it ended, in words, while
# squeue still shows the job RUNNING or COMPLETING (srun can exit before squeue catches up)
_DUE_TO = {"TIME LIMIT": "hit its time limit", "PREEMPTION": "preempted", "NODE FAILURE": "its node failed"}
_STEP_ENDED = re.compile(r"\*\*\* (?:STEP|JOB) \S+ ON \S+ CANCELLED AT \S+ DUE TO ([A-Z ]+?) \*\*\*")
_QUEUED = re.compile(r"\bjob (\d+) queued and waiting for resources")
_ALLOCATED = re.compile(r"\bjob (\d+) has been allocated resources")


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
        if self.slurm_state in ("", "COMPLETING") or self.slurm_state in RUNNING:
            said = [m.group(1) for m in map(_STEP_ENDED.search, list(self.output)) if m]
            if said and said[-1] in _DUE_TO:  # squeue lags behind: slurmstepd has said why
                why = _DUE_TO[said[-1]]
            elif self.slurm_state == "COMPLETING" and self.slurm_reason == "TimeLimit":
                why = ENDED_WHY["TIMEOUT"]  # being ended for its time limit: TIMEOUT once done
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


# --- what srun and squeue say ------------------------------------------------------------


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


def _newer(a: str, b: str) -> bool:
    def key(job_id: str) -> tuple[int, int]:
        head, _, tail = job_id.partition("_")
        return (int(head) if head.isdigit() else -1, int(tail) if tail.isdigit() else -1)

    return key(a) > key(b)
