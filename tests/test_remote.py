"""imgq.ssh against real sshd hosts: connecting, host keys, commands, SFTP sessions, a
long-lived process carrying protocol frames, dying hosts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imgq import ssh as remote
from imgq.fleet import protocol
from imgq.errors import HostUnreachable, UsageError
from imgq.ssh import HostSpec, parse_host_spec, remote_command
from sshhosts import SshHost, ssh_fleet, ssh_hosts  # noqa: F401

pytestmark = pytest.mark.timeout(60)

ECHO_FRAMES = r"""
import sys
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    h = i.read(8)
    if len(h) < 8:
        break
    o.write(h + i.read(int.from_bytes(h, "big")))
    o.flush()
"""


def connect(host: SshHost, **kw):
    return remote.connect(host.alias, ssh_config=host.ssh_config, **kw)


@pytest.fixture(scope="module")
def conn(ssh_fleet):
    c = connect(ssh_fleet.hosts[0])
    yield c
    remote.close(c)


def hostile_name(marker: Path) -> str:
    return f"$(touch {marker});'\"\n`touch {marker}` *.jpg"


# --- host specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, spec",
    [
        ("gpu1", HostSpec("gpu1")),
        ("alice@gpu1", HostSpec("gpu1", user="alice")),
        ("gpu1:2222", HostSpec("gpu1", port=2222)),
        ("gpu1/8", HostSpec("gpu1", slots=8)),
        ("alice@10.0.0.5:2222/8", HostSpec("10.0.0.5", "alice", 2222, 8)),
        ("host-1.example.org", HostSpec("host-1.example.org")),
        ("  host11 ", HostSpec("host11")),
    ],
)
def test_parse_host_spec(text, spec):
    assert parse_host_spec(text) == spec
    assert parse_host_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("@gpu1", "expected"),
        ("alice@", "expected"),
        ("gpu1:", "expected"),
        ("gpu1:0", "port 0"),
        ("gpu1:70000", "port 70000"),
        ("gpu1/0", "slots"),
        ("gpu1/x", "expected"),
        ("gpu 1", "expected"),
        ("-oProxyCommand=sh", "cannot start with '-'"),
        ("fe80::1", "IPv6"),
        ("a$(id)b", "expected"),
    ],
)
def test_bad_host_spec_is_a_usage_error(text, reason):
    with pytest.raises(UsageError, match=reason.replace("(", r"\(")) as e:
        parse_host_spec(text)
    assert "host spec" in str(e.value)


# --- connecting ------------------------------------------------------------------------


def test_connect_by_alias_and_run(conn, ssh_fleet):
    h = ssh_fleet.hosts[0]
    assert (conn.host, conn.port, conn.user) == (h.address, h.port, "root")
    r = remote.run(conn, ["sh", "-c", 'echo "$SSH_CONNECTION"; echo oops >&2; exit 3'])
    assert r.exit_status == 3 and not r.ok
    assert r.stdout.decode().split()[2:] == [h.address, str(h.port)]
    assert r.stderr == b"oops\n"


def test_run_feeds_input_larger_than_the_channel_window(conn):
    data = os.urandom(5_000_000)
    r = remote.run(conn, ["cat"], input=data)
    assert r.ok and r.stdout == data


def test_run_feeding_streams_stdin_and_a_command_that_stops_reading_is_answered_not_raised(conn, tmp_path):
    chunks = [os.urandom(3_000_000) for _ in range(6)]  # 18 MB: more than any channel window

    def feed(write):
        for c in chunks:
            write(c)
        return len(chunks)

    r, fed = remote.run_feeding(conn, ["sh", "-c", "wc -c; sha256sum"], lambda write: (write(b"".join(chunks)), 1)[1])
    assert r.ok and fed == 1 and r.stdout.decode().split()[0] == str(18_000_000)
    r, fed = remote.run_feeding(conn, ["sh", "-c", 'cat > "$1" && sha256sum < "$1"', "sh", str(tmp_path / "x")], feed)
    assert r.ok and fed == 6 and (tmp_path / "x").read_bytes() == b"".join(chunks)
    # a command that ends before reading its input: its status and stderr, the rest unsent
    r, fed = remote.run_feeding(conn, ["sh", "-c", "echo cannot write >&2; exit 5"], feed)
    assert (r.exit_status, r.stderr, fed) == (5, b"cannot write\n", 6)
    # feed fails half-way: the command sees the end of its input and is waited for
    def broken(write):
        write(chunks[0])
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        remote.run_feeding(conn, ["sh", "-c", 'cat > "$1"; echo done > "$1.end"', "sh", str(tmp_path / "y")], broken)
    assert (tmp_path / "y").read_bytes() == chunks[0] and (tmp_path / "y.end").exists()
    assert remote.run(conn, ["true"]).ok  # the connection survives all of it


def test_run_times_out_instead_of_hanging(conn):
    t = time.monotonic()
    with pytest.raises(HostUnreachable, match="timed out"):
        remote.run(conn, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t < 5
    assert remote.run(conn, ["true"]).ok  # the connection survives


def test_missing_ssh_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        remote.connect("host11", ssh_config=tmp_path / "nope")


def test_proxyjump_goes_through_the_jump_host(ssh_fleet, tmp_path):
    jump, target = ssh_fleet.hosts[0], ssh_fleet.hosts[1]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host behind\n    HostName {target.address}\n    Port {target.port}\n"
        f"    ProxyJump {jump.alias}\n"
        f"    User root\n    IdentityFile {ssh_fleet.client_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {ssh_fleet.known_hosts}\n\n" + ssh_fleet.ssh_config.read_text()
    )
    c = remote.connect("behind", ssh_config=cfg)
    try:
        assert c.gateway.is_connected and c.gateway.host == jump.address
        assert remote.run(c, ["true"]).ok
    finally:
        remote.close(c)
    assert not c.is_connected and not c.gateway.is_connected


# --- host keys -------------------------------------------------------------------------


def test_unknown_host_key_is_refused_by_default(ssh_hosts):
    (h,) = ssh_hosts(1, known=False)
    before = h.fleet.known_hosts.read_text()
    with pytest.raises(HostUnreachable) as e:
        connect(h)
    msg = str(e.value)
    assert f"host key for {h.alias}" in msg and "is unknown" in msg
    assert "--accept-new-host-keys" in msg and str(h.fleet.known_hosts) in msg
    assert "SHA256:" in msg
    assert h.fleet.known_hosts.read_text() == before


def test_unknown_host_key_is_accepted_and_saved_with_the_opt_in(ssh_hosts):
    known = ssh_hosts(1)[0]
    (h,) = ssh_hosts(1, known=False)
    kh = h.fleet.known_hosts
    before = kh.read_text()
    c = connect(h, accept_new_host_keys=True)
    assert remote.run(c, ["true"]).ok
    c.close()
    after = kh.read_text()
    assert after.startswith(before)  # appended; the user's lines are untouched
    key_type, key = h.host_key_pub.split()[:2]
    assert f"[{h.address}]:{h.port} {key_type} {key}" in after
    connect(h).close()  # now known without the opt-in
    connect(known).close()


def test_changed_host_key_is_refused_even_with_the_opt_in(ssh_hosts):
    a, b = ssh_hosts(2)
    kh = a.fleet.known_hosts
    # pretend a's key is b's: the key a presents no longer matches known_hosts
    kh.write_text(kh.read_text().replace(a.host_key_pub.split()[1], b.host_key_pub.split()[1]))
    for accept in (False, True):
        with pytest.raises(HostUnreachable, match="does not match"):
            connect(a, accept_new_host_keys=accept)


def test_jump_host_with_unknown_key_is_refused_too(ssh_hosts, tmp_path):
    target = ssh_hosts(1)[0]
    jump = ssh_hosts(1, known=False)[0]
    fleet = target.fleet
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host behind\n    HostName {target.address}\n    Port {target.port}\n"
        f"    ProxyJump {jump.alias}\n    User root\n    IdentityFile {fleet.client_key}\n"
        f"    UserKnownHostsFile {fleet.known_hosts}\n\n" + fleet.ssh_config.read_text()
    )
    with pytest.raises(HostUnreachable, match=f"host key for {jump.alias}.*is unknown"):
        remote.connect("behind", ssh_config=cfg)


# --- quoting ---------------------------------------------------------------------------


def test_remote_command_quotes_every_argument():
    assert remote_command(["ls", "-l", "a b", "$(x)", "it's"]) == (
        "ls -l 'a b' '$(x)' 'it'\"'\"'s'"
    )
    with pytest.raises(ValueError):
        remote_command(["echo", "a\0b"])
    with pytest.raises(TypeError):
        remote_command("ls -l")


def test_hostile_arguments_reach_the_remote_program_verbatim(conn, tmp_path):
    marker = tmp_path / "PWNED_args"
    args = [
        hostile_name(marker), "a b", "  ", "", "-n", "*", "~", "$HOME", "\\", "'", '"',
        "x;touch " + str(marker), "|touch " + str(marker), "\n\n", "ünï©ødé",
    ]
    r = remote.run(conn, ["printf", "%s\\0", *args])
    assert r.ok, r.stderr
    assert r.stdout.decode().split("\0")[:-1] == args
    assert not marker.exists()


# --- files -----------------------------------------------------------------------------


def test_concurrent_sftp_sessions_on_one_connection(conn, tmp_path):
    """open_sftp (used by ssh:// destinations): one session per thread, side by side."""
    from concurrent.futures import ThreadPoolExecutor

    blobs = {f"f{i}.jpg": os.urandom(1_000_000) for i in range(6)}

    def round_trip(item):
        name, data = item
        s = remote.open_sftp(conn)
        try:
            with s.open(str(tmp_path / name), "wb") as f:
                f.write(data)
            with s.open(str(tmp_path / name), "rb") as f:
                return f.read() == data
        finally:
            s.close()

    with ThreadPoolExecutor(3) as pool:
        assert all(pool.map(round_trip, blobs.items()))


# --- a long-lived process --------------------------------------------------------------


def send(p, header: dict, blob: bytes = b"") -> None:
    for piece in protocol.encode(header, blob):
        p.write(bytes(piece))


def receive(p):
    msg = protocol.read_message(p.read, limit=lambda header, size: size)
    return msg if msg is None else (msg[0], bytes(msg[1]))


def test_framed_process_echoes_frames(conn):
    with remote.start_process(conn, ["python3", "-c", ECHO_FRAMES], env={"LC_ALL": "C"}) as p:
        blobs = [b"", b"x", os.urandom(3_000_000), b"\0" * 9]
        for i, b in enumerate(blobs):
            send(p, {"type": "echo", "n": i}, b)
        assert [receive(p) for _ in blobs] == [({"type": "echo", "n": i}, b) for i, b in enumerate(blobs)]
        p.close_stdin()
        assert receive(p) is None
        assert p.wait(10) == 0


def test_process_that_dies_reports_its_stderr(conn):
    p = remote.start_process(conn, ["sh", "-c", "echo 'cannot import imgq' >&2; exit 7"])
    with pytest.raises(HostUnreachable, match=r"sh ended \(exit status 7\).*cannot import imgq"):
        p.read_exact(1)
    assert p.wait(10) == 7


# --- dying and hanging hosts ---------------------------------------------------------------


def test_killed_host_gives_host_unreachable_quickly(ssh_hosts):
    (h,) = ssh_hosts(1)
    c = connect(h)
    p = remote.start_process(c, ["python3", "-c", ECHO_FRAMES])
    send(p, {"type": "ping"})
    assert receive(p) == ({"type": "ping"}, b"")
    t = time.monotonic()
    h.kill()
    with pytest.raises(HostUnreachable):
        send(p, {"type": "ping"})
        receive(p)
    with pytest.raises(HostUnreachable, match="connection lost"):
        p.wait(5)
    with pytest.raises(HostUnreachable, match="connection lost"):
        remote.run(c, ["true"])
    with pytest.raises(HostUnreachable, match="connection refused"):
        connect(h)
    assert time.monotonic() - t < 5


def test_hung_host_gives_host_unreachable_within_the_timeout(ssh_hosts):
    (h,) = ssh_hosts(1)
    c = connect(h)
    p = remote.start_process(c, ["python3", "-c", ECHO_FRAMES], io_timeout=1)
    h.stop()
    try:
        t = time.monotonic()
        with pytest.raises(HostUnreachable, match="timed out"):
            send(p, {"type": "ping"})
            receive(p)
        with pytest.raises(HostUnreachable, match="no SSH server answered"):
            connect(h, connect_timeout=1)
        assert time.monotonic() - t < 8
    finally:
        h.cont()
    assert remote.run(c, ["true"], timeout=5).ok  # it was a hang, not a loss: the host comes back


def test_restarted_host_can_be_reached_again(ssh_hosts):
    (h,) = ssh_hosts(1)
    c = connect(h)
    h.restart()
    with pytest.raises(HostUnreachable):
        remote.run(c, ["true"])
    c2 = connect(h)
    assert remote.run(c2, ["true"]).ok
    c2.close()
