"""The sshd harness itself: real servers on loopback addresses, checked with the ssh client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sshhosts import SshFleet, SshHost, process_tree, ssh_fleet, ssh_hosts  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def ssh(host: SshHost, *command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """The OpenSSH client, by alias, with the fleet's config (BatchMode: never prompts)."""
    return subprocess.run(
        host.fleet.ssh_argv(host, *command),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def banner(host: SshHost, timeout: float = 1.0) -> bytes:
    with socket.create_connection((host.address, host.port), timeout=timeout) as s:
        return s.recv(64)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead; only its exit status is left


def test_fleet_hosts_listen_on_their_own_loopback_addresses(ssh_fleet):
    hosts = ssh_fleet.hosts
    assert [h.alias for h in hosts] == ["host11", "host12", "host13"]
    assert [h.address for h in hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    for h in hosts:
        assert h.running and alive(h.pid)
        assert banner(h).startswith(b"SSH-2.0-OpenSSH")
        # the address is really the host's own: nothing answers on 127.0.0.1 at that port
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", h.port), timeout=1).close()


def test_openssh_client_logs_in_by_alias_as_root(ssh_fleet):
    for h in ssh_fleet.hosts:
        r = ssh(h, "id -u; echo $SSH_CONNECTION")
        assert r.returncode == 0, r.stderr + h.log()
        uid, conn = r.stdout.split("\n")[:2]
        assert uid == "0"
        assert conn.split()[2:] == [h.address, str(h.port)]


def test_host_left_out_of_known_hosts_is_refused_by_openssh(ssh_hosts):
    known, unknown = ssh_hosts(1)[0], ssh_hosts(1, known=False)[0]
    assert ssh(known, "true").returncode == 0
    r = ssh(unknown, "true")
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr
    assert f"[{unknown.address}]:{unknown.port}" not in unknown.fleet.known_hosts.read_text()


def test_kill_takes_down_open_sessions_and_their_commands(ssh_hosts):
    (h,) = ssh_hosts(1)
    session = subprocess.Popen(
        h.fleet.ssh_argv(h, "sleep 300"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while len(process_tree(h.pid)) < 3:  # listener, session sshd, sleep
        assert time.monotonic() < deadline, "the session never started"
        time.sleep(0.05)
    tree = process_tree(h.pid)
    h.kill()
    assert session.wait(timeout=10) == 255
    assert not any(alive(p) for p in tree)
    assert not h.running


def test_stop_freezes_the_host_and_cont_thaws_it(ssh_hosts):
    (h,) = ssh_hosts(1)
    h.stop()
    try:
        # the kernel still completes the TCP handshake, but sshd says nothing: a hung host
        with pytest.raises(socket.timeout):
            banner(h, timeout=0.5)
    finally:
        h.cont()
    assert banner(h, timeout=5).startswith(b"SSH-")
    assert ssh(h, "true").returncode == 0


def test_restart_keeps_address_port_and_host_key(ssh_hosts):
    (h,) = ssh_hosts(1)
    before = (h.address, h.port, h.pid)
    h.restart()
    assert (h.address, h.port) == before[:2] and h.pid != before[2]
    assert ssh(h, "true").returncode == 0  # the known_hosts entry still matches


def test_config_error_is_reported_with_sshd_output(tmp_path):
    fleet = SshFleet(tmp_path)
    with fleet:
        h = fleet.add_host(start=False)
        with open(h.config_path, "a") as f:
            f.write("NoSuchOption yes\n")
        with pytest.raises(RuntimeError, match="NoSuchOption"):
            h.start()


def test_close_leaves_no_process_behind(tmp_path):
    fleet = SshFleet(tmp_path)
    hosts = fleet.add_hosts(2)
    pids = [p for h in hosts for p in process_tree(h.pid)]
    hosts[1].stop()  # even a frozen host must go
    fleet.close()
    assert not any(alive(p) for p in pids)
    fleet.close()  # twice is fine


def test_sshd_dies_with_the_process_that_started_it(tmp_path):
    """If pytest itself is killed -9, no sshd outlives it (PR_SET_PDEATHSIG)."""
    script = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from sshhosts import SshFleet\n"
        "f = SshFleet(%r); h = f.add_host(); print(h.pid, flush=True); time.sleep(60)\n"
    ) % (os.path.dirname(__file__), str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    sshd_pid = int(child.stdout.readline())
    assert alive(sshd_pid)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5
    while alive(sshd_pid):
        assert time.monotonic() < deadline, "sshd outlived its parent"
        time.sleep(0.05)
