"""A one-node Slurm cluster made of plain processes, for the tests of ``imgq work --slurm``.

Three daemons from the Debian packages (``munge``, ``slurmctld``, ``slurmd``), started in
the foreground as children of the test process, with everything in one temporary folder:
the munge key and socket, ``slurm.conf``, the controller's state, the node's spool, pid and
log files. Nothing is written under /etc: ``SLURM_CONF`` names the folder's ``slurm.conf``
(this module exports it while the cluster runs, and ``cluster.env`` carries it for
subprocesses), and ``AuthInfo=socket=...`` points Slurm's munge plugin at the folder's
munge socket. It starts in about a second::

    def test_something(slurm_cluster):
        slurm_cluster.run("srun", "hostname")     # CompletedProcess, SLURM_CONF set
        slurm_cluster.squeue()                    # [{"id": "3", "name": ..., "state": "RUNNING", ...}]

The node (``imgqnode``) advertises 4 CPUs whatever the machine has
(``SlurmdParameters=config_overrides``), so a test can run four 1-CPU jobs, and a fifth
stays pending. Settings that matter for the tests, each measured here:

- ``SelectType=select/cons_tres`` with ``CR_Core_Memory`` and ``DefMemPerCPU``: without a
  default memory per CPU every job takes all of the node's memory and jobs run one at a time;
- ``SchedulerParameters=batch_sched_delay=0``: an sbatch job starts in 0.5-1 s, not 3 s;
- ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``: no cgroups, no systemd;
- ``SlurmUser=root``: the tests run as root (as CI does), with no terminal.

Without pytest (``bin/bench slurm``): ``SlurmCluster(folder).start()`` and ``close()``.
Fixture: ``slurm_cluster``, session-scoped (one cluster for the whole run; each test
cancels its own jobs, and ``cancel_all()`` is there for the rest). Tests skip, saying why,
where the packages are missing (bin/test installs ``slurmctld slurmd slurm-client munge``)
or the tests do not run as root. Teardown cancels every job, waits for the queue to empty,
then stops the daemons by their pid files (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

try:  # bin/bench slurm starts a cluster too, and bin/bench does not install pytest
    import pytest
except ImportError:
    pytest = None

NODE = "imgqnode"
CPUS = 4
MEMORY_MB = 4000
MEM_PER_CPU_MB = 100
PARTITION = "debug"
START_TIMEOUT = 30.0
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("srun", "sbatch", "squeue", "scancel", "sinfo")
APT = "slurmctld slurmd slurm-client munge"

_LIVE: list["SlurmCluster"] = []


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster runs its daemons as root (SlurmUser=root)"
    absent = [p for p in DAEMONS.values() if not os.access(p, os.X_OK)]
    absent += [c for c in CLIENTS if shutil.which(c) is None]
    if absent:
        return f"Slurm is not installed (missing {', '.join(absent)}; apt-get install {APT}, or run bin/test as root)"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL this daemon if the test process dies abruptly."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    """munged + slurmctld + slurmd in ``dir``; ``start()``, ``close()``."""

    def __init__(self, root: Path | None = None):
        self.dir = Path(root) if root else Path(tempfile.mkdtemp(prefix="imgq-slurm-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.node, self.cpus, self.partition = NODE, CPUS, PARTITION
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for k in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[k]  # the test runner inside an allocation must not leak into ours
        self._old_conf: str | None = None

    # --- files --------------------------------------------------------------------------

    def _write_files(self) -> None:
        d = self.dir
        (d / "munge").mkdir(mode=0o700, exist_ok=True)
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        for sub in ("state", "spool"):
            (d / sub).mkdir(exist_ok=True)
        (d / "plugstack.conf").write_text("")  # not /etc/slurm's
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(
            "ClusterName=imgqtest\n"
            "SlurmctldHost=localhost(127.0.0.1)\n"
            f"SlurmctldPort={ctld_port}\n"
            f"SlurmdPort={slurmd_port}\n"
            "SlurmUser=root\n"
            "SlurmdUser=root\n"
            "AuthType=auth/munge\n"
            "CredType=cred/munge\n"
            f"AuthInfo=socket={self.munge_socket}\n"
            f"StateSaveLocation={d / 'state'}\n"
            f"SlurmdSpoolDir={d / 'spool'}\n"
            f"SlurmctldPidFile={d / 'slurmctld.pid'}\n"
            f"SlurmdPidFile={d / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={d / 'slurmctld.log'}\n"
            f"SlurmdLogFile={d / 'slurmd.log'}\n"
            f"PlugStackConfig={d / 'plugstack.conf'}\n"
            "ProctrackType=proctrack/linuxproc\n"
            "TaskPlugin=task/none\n"
            "SelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core_Memory\n"
            f"DefMemPerCPU={MEM_PER_CPU_MB}\n"
            "SchedulerParameters=batch_sched_delay=0\n"
            "SlurmdParameters=config_overrides\n"
            "ReturnToService=2\n"
            "MpiDefault=none\n"
            "JobCompType=jobcomp/none\n"
            "AccountingStorageType=accounting_storage/none\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "KillWait=2\n"
            "InactiveLimit=0\n"
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n"
        )

    # --- daemons ------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.out", "ab")
        with log:
            self.procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                preexec_fn=_die_with_parent, close_fds=True, cwd=self.dir,
            )

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {START_TIMEOUT:g} s"
                logs = self.logs()
                self.close()
                raise RuntimeError(f"Slurm test cluster in {self.dir}: {what}: {why}\n{logs}")
            time.sleep(0.05)

    def start(self) -> "SlurmCluster":
        self._write_files()
        m = self.dir / "munge"
        self._spawn("munged", [
            DAEMONS["munged"], "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={self.dir / 'munged.pid'}",
            f"--log-file={self.dir / 'munged.log'}", f"--seed-file={m / 'munged.seed'}",
        ])
        _LIVE.append(self)
        self._wait("munged", self.munge_socket.exists)
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [DAEMONS["slurmd"], "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait("waiting for the node to be idle", self._idle)
        self._old_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        return self

    def _idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%t"], env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def logs(self) -> str:
        out = []
        for f in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name} (last lines)\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(out)

    # --- using it -----------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (text, output captured)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, **kw)

    def squeue(self, *, all_states: bool = False, name: str | None = None) -> list[dict[str, str]]:
        """The jobs in the queue (``all_states``: also those that ended recently), one dict
        per job (array tasks one by one): id, name, state, reason."""
        argv = ["squeue", "-h", "-r", "-o", "%i|%j|%T|%r"]
        if all_states:
            argv += ["-t", "all"]
        if name:
            argv += ["--name", name]
        r = self.run(*argv)
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr}")
        return [dict(zip(("id", "name", "state", "reason"), line.split("|", 3))) for line in r.stdout.splitlines() if line]

    def cancel_all(self, timeout: float = 20.0) -> None:
        """Cancel every job and wait until the queue has none left (running or pending)."""
        self.run("scancel", "--user", "root")
        deadline = time.monotonic() + timeout
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        """Cancel the jobs, then stop the daemons by their pid files. Safe to call twice."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.cancel_all()
            except (RuntimeError, subprocess.TimeoutExpired, OSError):
                pass
        for name, pidfile in (("slurmd", "slurmd.pid"), ("slurmctld", "slurmctld.pid"), ("munged", "munged.pid")):
            proc = self.procs.get(name)
            pid = None
            try:
                pid = int((self.dir / pidfile).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = proc.pid if proc else None
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        if self in _LIVE:
            _LIVE.remove(self)
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf
        self._old_conf = None


@atexit.register
def _stop_leftovers() -> None:
    for c in list(_LIVE):
        c.close()


if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """A running one-node cluster (4 CPUs) for the whole session; SLURM_CONF exported."""
        why = missing()
        if why:
            pytest.skip(why)
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
        try:
            yield cluster
        finally:
            cluster.close()
