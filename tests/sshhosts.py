"""Real OpenSSH servers on loopback addresses, standing in for the hosts of a fleet.

Each host is a ``/usr/sbin/sshd -D -e`` subprocess listening on its own loopback address
(127.0.0.11, 127.0.0.12, ...) and a free port, with throw-away ed25519 host keys, one
throw-away client key, and a client ``ssh_config`` giving every host an alias
(``host11``, ``host12``, ...) so code under test connects exactly as a user would::

    def test_something(ssh_fleet):
        host = ssh_fleet.hosts[0]             # SshHost: alias "host11", 127.0.0.11:PORT
        connect(parse_host_spec(host.alias), ssh_config=ssh_fleet.ssh_config, ...)
        host.kill()                           # the host dies: sshd and every session

Fixtures (import them into a test module or list this module in ``pytest_plugins``):

- ``ssh_fleet``: module-scoped fleet of three running hosts (host11..host13).
- ``ssh_hosts``: function-scoped factory, ``ssh_hosts(n, known=True) -> list[SshHost]``;
  every call adds hosts to one fresh fleet (``ssh_hosts.fleet``) torn down after the test.
  ``known=False`` leaves the hosts' keys out of known_hosts (the "unknown host" case).

A host "dies" the way a machine does: ``kill()`` SIGKILLs the listener *and* every process
below it (per-connection sshd children, remote shells, agents), because killing only the
listener leaves established sessions running. ``stop()``/``cont()`` freeze and thaw the
same tree (a hung host); ``restart()`` brings it back on the same address, port and key.

Requires root (sshd privilege separation; logging in as root with a key).
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
from dataclasses import dataclass, field
from pathlib import Path

try:
    import pytest
    fixture = pytest.fixture
except ImportError:  # bin/bench (fleet, tcp, slurm) uses SshFleet, and does not install pytest
    def fixture(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

SSHD = "/usr/sbin/sshd"  # absolute: sshd refuses to re-exec itself from a relative path
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
FIRST_OCTET = 11
START_TIMEOUT = 10.0

# Every sshd this process started, so that even an interpreter exit that skips fixture
# teardown (Ctrl-C twice, a crash in a finalizer) does not leave servers behind.
_LIVE: dict[int, "SshHost"] = {}


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL this sshd if the test process dies abruptly."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux: atexit and fixture teardown still clean up
        pass


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: parse after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants (Linux /proc), parents first."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _signal_tree(pid: int, sig: int) -> None:
    for p in process_tree(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    """Make an unencrypted ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _accepts_ssh(address: str, port: int) -> bool:
    """True once something on address:port answers with an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@dataclass
class SshHost:
    """One running sshd: a host of the fleet, reachable by ``alias`` in the fleet's config."""

    name: str  # also the ssh_config alias
    address: str
    port: int
    dir: Path
    fleet: "SshFleet" = field(repr=False)
    known: bool = True  # is the host key in the client's known_hosts?
    host_key_pub: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def alias(self) -> str:
        return self.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def ssh_config(self) -> Path:
        return self.fleet.ssh_config

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log(self) -> str:
        """sshd's log so far (auth failures, config errors, disconnects)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def write_config(self) -> None:
        d = self.dir
        self.config_path.write_text(
            f"ListenAddress {self.address}:{self.port}\n"
            f"HostKey {d / 'ssh_host_ed25519_key'}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.fleet.dir / 'authorized_keys'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding yes\n"  # ProxyJump through a fleet host
            "MaxSessions 64\n"  # one connection carries several channels (SFTP + agent)
            "MaxStartups 64:30:128\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
            # bash sources ~/.bashrc for commands run by sshd unless SHLVL says it is
            # nested. This machine's root .bashrc runs `pyenv init`, whose rehash takes a
            # lock file: slow, and a session killed mid-rehash (as these tests do) leaves a
            # stale lock that stalls every later login for a minute. Test sessions get a
            # clean, fast, deterministic environment instead; real hosts keep their rc files.
            + ("SetEnv SHLVL=1\n" if self.fleet.skip_shell_rc else "")
        )

    def start(self) -> None:
        """Start sshd and return once it answers with an SSH banner; raise with its log if not."""
        if self.proc and self.proc.poll() is None:
            return
        check = subprocess.run(
            [SSHD, "-t", "-f", str(self.config_path)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejects {self.config_path}:\n{check.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent, close_fds=True,
            )
        _LIVE[self.proc.pid] = self
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts_ssh(self.address, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"sshd for {self.name} ({self.address}:{self.port}) did not start "
                    f"(exit {self.proc.returncode}); log {self.log_path}:\n{self.log()}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """The host dies: SIGKILL sshd and everything it spawned (sessions, remote commands)."""
        if not self.proc:
            return
        # freeze first so nothing forks new children while we collect the tree
        _signal_tree(self.proc.pid, signal.SIGSTOP)
        _signal_tree(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        _LIVE.pop(self.proc.pid, None)

    def stop(self) -> None:
        """The host hangs: SIGSTOP sshd and its sessions (TCP still accepts, nothing answers)."""
        if self.proc:
            _signal_tree(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """Undo ``stop()``."""
        if self.proc:
            _signal_tree(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again: same address, port and host key, fresh processes."""
        self.kill()
        self.proc = None
        self.start()

    @property
    def running(self) -> bool:
        return bool(self.proc) and self.proc.poll() is None


class SshFleet:
    """A set of sshd hosts sharing one client key, one known_hosts and one ssh_config."""

    def __init__(self, root: Path | None = None, *, skip_shell_rc: bool = True):
        if os.geteuid() != 0:
            raise RuntimeError("the sshd harness needs root (privilege separation, root login)")
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.skip_shell_rc = skip_shell_rc
        self.dir = Path(root) if root else Path(tempfile.mkdtemp(prefix="imgq-ssh-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_key = self.dir / "client_ed25519"
        self.client_key_pub = _keygen(self.client_key, "imgq-test-client")
        (self.dir / "authorized_keys").write_text(self.client_key_pub + "\n")
        self.known_hosts = self.dir / "known_hosts"
        self.ssh_config = self.dir / "ssh_config"
        self.hosts: list[SshHost] = []
        self._write_client_files()

    def add_host(self, *, known: bool = True, start: bool = True) -> SshHost:
        """Start one more host on the next loopback address (127.0.0.11, .12, ...)."""
        octet = FIRST_OCTET + len(self.hosts)
        if octet > 254:
            raise RuntimeError("out of loopback addresses")
        address = f"127.0.0.{octet}"
        hdir = self.dir / f"host{octet}"
        hdir.mkdir()
        host = SshHost(
            name=f"host{octet}", address=address, port=_free_port(address), dir=hdir,
            fleet=self, known=known,
        )
        host.host_key_pub = _keygen(hdir / "ssh_host_ed25519_key", host.name)
        host.write_config()
        self.hosts.append(host)
        self._write_client_files()
        if start:
            for attempt in range(3):
                try:
                    host.start()
                    break
                except RuntimeError:
                    # the free port may have been taken between probing and binding
                    if attempt == 2 or "Address already in use" not in host.log():
                        raise
                    host.port = _free_port(address)
                    host.write_config()
                    self._write_client_files()
        return host

    def add_hosts(self, n: int, *, known: bool = True) -> list[SshHost]:
        return [self.add_host(known=known) for _ in range(n)]

    def __getitem__(self, alias: str) -> SshHost:
        for h in self.hosts:
            if h.alias == alias:
                return h
        raise KeyError(alias)

    def _write_client_files(self) -> None:
        lines = []
        for h in self.hosts:
            if h.known:
                key_type, key_b64 = h.host_key_pub.split()[:2]
                lines.append(f"[{h.address}]:{h.port} {key_type} {key_b64}\n")
        self.known_hosts.write_text("".join(lines))
        blocks = []
        for h in self.hosts:
            blocks.append(
                f"Host {h.alias}\n"
                f"    HostName {h.address}\n"
                f"    Port {h.port}\n"
                "    User root\n"
                f"    IdentityFile {self.client_key}\n"
                "    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                "    StrictHostKeyChecking yes\n"
                "    BatchMode yes\n"
                "    ConnectTimeout 5\n"
            )
        self.ssh_config.write_text("\n".join(blocks))

    def ssh_argv(self, host: SshHost, *command: str) -> list[str]:
        """An OpenSSH client command line for ``host`` (to cross-check against the real ssh)."""
        return ["ssh", "-F", str(self.ssh_config), host.alias, *command]

    def close(self) -> None:
        """Kill every host (and every session below it). Safe to call twice."""
        for h in self.hosts:
            h.cont()  # a stopped process still dies from SIGKILL, but be tidy
            h.kill()

    def __enter__(self) -> "SshFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for host in list(_LIVE.values()):
        host.kill()


@fixture(scope="module")
def ssh_fleet(tmp_path_factory):
    """Three running hosts (host11, host12, host13) shared by the tests of one module."""
    fleet = SshFleet(tmp_path_factory.mktemp("sshfleet"))
    try:
        fleet.add_hosts(3)
        yield fleet
    finally:
        fleet.close()


@fixture
def ssh_hosts(tmp_path_factory):
    """Factory: ``ssh_hosts(n, known=True) -> list[SshHost]`` in a fleet private to the test."""
    fleet: SshFleet | None = None

    def make(n: int = 1, *, known: bool = True) -> list[SshHost]:
        nonlocal fleet
        if fleet is None:
            fleet = SshFleet(tmp_path_factory.mktemp("sshhosts"))
            make.fleet = fleet
        return fleet.add_hosts(n, known=known)

    make.fleet = None
    try:
        yield make
    finally:
        if fleet is not None:
            fleet.close()
