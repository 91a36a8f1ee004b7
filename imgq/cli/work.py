"""imgq work [-j N] [--drain | --follow]"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import report as report_lib
from imgq import work as work_step
from imgq.cli import common
from imgq.cli.options import AcceptNewOpt, AdvertiseOpt, AgentFileOpt, ConfigOpt, ConnectTimeoutOpt, DbOpt, HostsFileOpt, HostsOpt, JsonOpt, ListenOpt, RemoteImgqOpt, SbatchOpt, SlurmArgOpt, SlurmOpt, SshConfigOpt, connect_back, fleet_options
from imgq.config import DEFAULTS
from imgq.errors import Exit, UsageError
from imgq.ledger import queue

EPILOG = """\b
Examples:
  imgq work --drain                 # all cores, exit when the queue is empty
  imgq work -j 2 --follow           # keep polling for new jobs (a service)
  imgq work --once                  # from cron: what is due now, then exit
  imgq scan inbox/ | imgq enqueue - ; imgq work --drain
  imgq work --drain --report run.json   # the run's report (see `imgq report`)
  imgq work --hosts gpu1,gpu2/8,alice@render3:2222   # on hosts over SSH (docs/fleet.md)
  imgq work --hosts-file hosts.txt --follow          # re-read: edit it to add/drain hosts
  imgq work --listen :7700 --agent-file ~/run.env    # agents connect: imgq agent --secret-file ~/run.env
  imgq work --slurm 8 --slurm-arg=--partition=batch  # 8 agents as Slurm jobs (docs/fleet.md)
  imgq work --slurm 32 --shared-root /scratch/photos --shared-store   # a cluster filesystem: nothing but headers cross
"""


def work(
    processes: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Local worker processes (default: all cores; with --hosts, --listen or --slurm, none unless given).", min=1, metavar="N", show_default=False)] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Exit when no job is left (default).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Keep polling for new jobs until SIGINT/SIGTERM.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Exit when no job is due now: jobs waiting out a retry backoff are left for the next run (for cron).")] = False,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Jobs per claim (default: adapts to about 0.5 s of work).", min=1, metavar="N", show_default=False)] = None,
    lease: Annotated[Optional[float], typer.Option("--lease", help=f"Seconds a claim holds a job without a heartbeat (default {DEFAULTS.lease_seconds:g}).", min=0.5, metavar="SECONDS", show_default=False)] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="At most N attempts for a transiently failing job, here (default: the job's own limit, none unless enqueued with one; a transient failure is retried for retry_for seconds, a day by default).", min=1, metavar="N", show_default=False)] = None,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between polls of an empty queue.", min=0.05, metavar="SECONDS")] = 1.0,
    report: Annotated[Optional[Path], typer.Option("--report", help="When the run ends, write its report (`imgq report --run ID`) to FILE: JSON if FILE ends in .json, else text.", metavar="FILE", show_default=False)] = None,
    hosts: HostsOpt = None,
    hosts_file: HostsFileOpt = None,
    slots: Annotated[Optional[int], typer.Option("--slots", help="Worker slots per host without /slots (default: its cores).", min=1, metavar="N", show_default=False)] = None,
    prefetch: Annotated[Optional[int], typer.Option("--prefetch", help="Jobs sent to a host ahead of its free slots (default: as many as its slots, or, when its jobs take milliseconds, enough for 25 ms of its work, up to 8 times its slots).", min=0, metavar="N", show_default=False)] = None,
    transfers: Annotated[int, typer.Option("--transfers", help="Inputs read and sent at once per host.", min=1, metavar="N")] = 2,
    shared_root: Annotated[Optional[Path], typer.Option("--shared-root", help="The hosts see the inbox at the same path under PATH: send paths, not bytes.", metavar="PATH", show_default=False)] = None,
    shared_store: Annotated[bool, typer.Option("--shared-store", help="The hosts see the store at the same path (a cluster file system): agents write artifacts into it themselves and send only their sizes and sha256, which this machine checks before the fenced completion.")] = False,
    slurm: SlurmOpt = None,
    slurm_arg: SlurmArgOpt = None,
    sbatch: SbatchOpt = False,
    remote_imgq: RemoteImgqOpt = "imgq",
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    connect_timeout: ConnectTimeoutOpt = None,
    listen: ListenOpt = None,
    advertise: AdvertiseOpt = None,
    agent_file: AgentFileOpt = None,
    host_timeout: Annotated[float, typer.Option("--host-timeout", help="Seconds of silence (agents beat every second) after which a host is lost and its jobs run elsewhere.", min=2.0, metavar="SECONDS")] = 5.0,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Claim jobs, process them, verify the artifacts, and complete them.

    Each worker claims a batch of jobs with a lease, renders every artifact of a job
    from one decode of the original (opened without following symlinks and checked
    against its recorded sha256), writes each under a name of its own attempt, verifies
    it decodes at the expected size, and completes the job only if it still holds the
    lease: the outputs are renamed onto their final names inside that same transaction,
    so a worker that lost its lease never replaces a newer result. Bad input fails at once with the reason; I/O trouble is
    retried with backoff. SIGINT/SIGTERM finish the job in hand and hand back the rest;
    after SIGKILL the lease expires and another worker takes the job. Prints the id of
    each file that became processed.

    With --hosts or --hosts-file, this machine coordinates and the hosts work: it keeps
    the database, starts `imgq agent` on each host over SSH, sends inputs ahead of need,
    checks and stores the artifacts that come back. A host that fails the preflight of
    `imgq hosts check`, dies, hangs or keeps failing is benched (see `imgq status`) and
    its jobs run elsewhere.

    With --slurm N, Slurm starts the agents: N jobs (srun children, or with --sbatch one
    array job) each running `imgq agent`, which connects back to this machine; a job
    that is pending, cancelled or out of time is shown on stderr with Slurm's reason,
    and every job is cancelled when the run ends.

    With --listen, agents started some other way (a batch scheduler, a site script:
    `imgq agent --connect HOST:PORT`) connect to this machine over TLS and join the
    same roster, after proving this run's secret. The run waits for them while jobs are
    queued and none is connected; --drain still ends it when the queue is empty.
    """
    if sum((drain, follow, once)) > 1:
        raise UsageError("--drain, --follow and --once cannot be used together")
    if report is not None and not report.parent.is_dir():
        raise UsageError(f"--report {report}: folder {report.parent} does not exist")
    inv = common.Invocation("work", db, config)
    settings = inv.settings
    if lease is not None:
        settings.lease_seconds = lease
    opts = work_step.WorkOptions(processes=processes or os.cpu_count() or 1, mode="follow" if follow else ("once" if once else "drain"), batch=batch, poll=poll, max_attempts=max_attempts)
    agents = connect_back(listen=listen, advertise=advertise, agent_file=agent_file, slurm=slurm, slurm_arg=slurm_arg, sbatch=sbatch,
                          settings=settings, remote_imgq=remote_imgq)
    launcher = agents["launcher"]
    fleet_opts = None
    if hosts or hosts_file or listen is not None or launcher is not None:
        fleet_opts = fleet_options(
            hosts=hosts or [], hosts_file=hosts_file, remote_imgq=remote_imgq, slots=slots, prefetch=prefetch, transfers=transfers,
            shared_root=shared_root, shared_store=shared_store, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys, connect_timeout=connect_timeout,
            host_timeout=host_timeout, local_processes=processes or 0, mode=opts.mode, max_attempts=max_attempts, poll=poll, **agents,
        )
    database = inv.database
    err = common.stderr()
    progress = None

    def on_report(r: tuple) -> None:
        nonlocal progress
        if progress is None and common.is_tty() and not common.quiet():
            progress = _Progress(err, database)  # started after the fork: no thread crosses it
        if progress:
            progress.update(r)
        if r[0] == "processed":
            if json:
                common.out_json({"id": r[1], "state": "processed"})
            else:
                common.out(r[1])
        elif r[0] == "failed":
            common.warn(f"failed: {r[3]}")
        elif r[0] == "done":
            common.detail(f"job {r[1]} done")
        elif r[0] == "retrying":
            common.detail(f"job {r[1]} will be retried: {r[2]}")
        else:
            common.fleet_report(r)  # hosts, agents, Slurm jobs, warnings

    run_ids: list[int] = []
    slurm_args = {"slurm": slurm, "sbatch": sbatch} if launcher is not None else {}
    hosts_args = {"hosts": [e.name for e in fleet_opts.hosts], "hosts_file": str(hosts_file) if hosts_file else None, "listen": listen} if fleet_opts else {}
    # no step lock: any number of workers share the queue
    with _report_when_done(report, database, settings, run_ids), inv.recorded({"jobs": opts.processes, "mode": opts.mode, **hosts_args, **slurm_args}, locks=()) as run:
        run_ids.append(run["id"])
        opts.run_id = run["id"]  # the workers' events name this run
        started = time.time()
        try:
            if fleet_opts is not None:
                from imgq.fleet import coordinator  # the SSH stack loads only when hosts are used

                summary = coordinator.work(settings, fleet_opts, database, on_report=on_report)
            else:
                summary = work_step.work(settings, opts, on_report=on_report)
        finally:
            if progress:
                progress.stop()
        wall = time.time() - started
        run["counts"] = {
            "done": summary.done,
            "failed": len(summary.failed),
            "retrying": summary.retrying,
            "lost": summary.lost,
            "processed": len(summary.processed),
            "seconds": round(wall, 3),
            "processes": opts.processes,
        }
        if fleet_opts is not None:
            run["counts"].update(processes=fleet_opts.local_processes, bytes_out=summary.bytes_out, bytes_in=summary.bytes_in, hosts=summary.hosts)
        rate = summary.done / wall if wall > 0 else 0
        common.summary(f"work: {summary.done} done, {len(summary.failed)} failed, {summary.retrying} to retry in {common.duration(wall)} ({rate:.1f} jobs/s)")
        if summary.interrupted:
            run["exit_code"] = int(Exit.INTERRUPTED)
        elif summary.failed:
            run["exit_code"] = int(Exit.SOME_FAILED)



@contextlib.contextmanager
def _report_when_done(path, database, settings, run_ids: list[int]):
    """Write the run's report after ``recorded_run`` has closed the run (so it has its
    end time and exit code), however the run ended."""
    try:
        yield
    finally:
        if path is not None and run_ids:
            rep = report_lib.build(database, now=time.time(), run_id=run_ids[0], store_dir=settings.store_dir.resolve())
            report_lib.write(path, rep)


class _Progress:
    """A progress bar on the terminal (stderr) only: jobs finished by this run out of
    those finished plus those still waiting. Both are counted when a report comes (the
    queue is read again at most twice a second), so jobs finished before the bar
    appeared, jobs enqueued meanwhile and jobs split into parts keep M/N true: M never
    passes N, and M equals N when the queue is empty."""

    def __init__(self, console, database):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.database = database
        self.finished = 0
        self.waiting = queue.pending(database)[0]
        self.read_at = time.monotonic()
        self.bar = common.progress(TextColumn("work"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task("work", total=self.waiting)
        self.bar.start()

    def update(self, r: tuple, *, read: bool = False) -> None:
        if r[0] in ("done", "failed"):
            self.finished += 1
            self.waiting = max(0, self.waiting - 1)  # until the queue is read again
        now = time.monotonic()
        if read or now - self.read_at >= 0.5:
            self.read_at = now
            self.waiting = queue.pending(self.database)[0]
        self.bar.update(self.task, completed=self.finished, total=self.finished + self.waiting)

    def stop(self) -> None:
        try:
            with contextlib.suppress(sqlite3.Error):  # a failing database is reported by the step, not here
                self.update(("end",), read=True)  # the last frame tells how it ended
        finally:
            self.bar.stop()
