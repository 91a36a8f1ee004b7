"""Agents as Slurm jobs: ``imgq work --slurm N`` (one ``srun`` child per agent) and
``--slurm N --sbatch`` (one array job). Slurm places the agents; the agents dial back to
the coordinator over TCP, so this module only starts, watches and cancels jobs: it is
given the agent's command line and the environment to start it with, and knows nothing
of frames, secrets or sockets.

Here: the options of ``imgq work --slurm`` and the coordinator's launcher
(``SlurmLauncher``). ``imgq.fleet.slurm_jobs`` starts, watches and cancels the jobs (srun
and sbatch modes); ``imgq.fleet.slurm_state`` holds the job model and its states. Their
public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence

from imgq.config import SlurmSettings
from imgq.errors import SlurmError, UsageError  # noqa: F401  (SlurmError, UsageError: as before the split)
from imgq.fleet.slurm_jobs import (  # noqa: F401  (re-exported: callers import them from here)
    COMMAND_TIMEOUT, PDEATHSIG, RESERVED, SlurmJobs, batch_script, check_args, clean_env, job_options, new_run_id,
    require_commands,
)
from imgq.fleet.slurm_state import (  # noqa: F401  (re-exported: callers import them from here)
    ENDED_WHY, OUTPUT_LINES, PENDING, RUNNING, AgentJob, agent_label, cpus_from_env,
)


@dataclasses.dataclass
class SlurmOptions:
    """``imgq work --slurm N [--slurm-arg ARG]... [--sbatch]``."""

    agents: int
    args: tuple[str, ...] = ()  # extra srun/sbatch options, after the [slurm] table's
    sbatch: bool = False


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
