"""Connect-back agents: `imgq work --listen` and `imgq agent --connect`, over loopback.

Real coordinators and agents in subprocesses, real TLS, real signals; the hostile
connections are made with the standard library's own socket and ssl, not with imgq's
client, so they are not shaped by the code they test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import imgq_env, imgq_subprocess, query
from imgq import samples
from imgq.errors import UsageError
from imgq.fleet import listen, protocol, tls

pytestmark = pytest.mark.timeout(150)

SLOW_OPS = ["bilateral:15|fit:400x300", "bilateral:13|fit:400x300", "median:15|fit:400x300"]


# --- helpers --------------------------------------------------------------------------------


def imgq(cwd, *args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return imgq_subprocess(*args, cwd=cwd, timeout=timeout, env=env)


def start(cwd, *args, env=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgq", *map(str, args)], cwd=cwd, env=imgq_env(env), text=True,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def start_coordinator(cwd: Path, *extra) -> tuple[subprocess.Popen, dict]:
    """`imgq work --listen 127.0.0.1` in the background; (process, its agent file's values)."""
    p = start(cwd, "work", "--listen", "127.0.0.1", "--agent-file", cwd / "run.env", *extra)
    deadline = time.monotonic() + 30
    while not (cwd / "run.env").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"the coordinator did not start listening: {p.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return p, listen.parse_credentials((cwd / "run.env").read_text(), where="run.env")


def start_agent(cwd: Path, *args, env=None, stdin_text: str | None = None) -> subprocess.Popen:
    p = start(cwd, "agent", "--slots", "1", "--workdir", cwd / "agents", *args, env=env,
              stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL)
    if stdin_text is not None:
        p.stdin.write(stdin_text)
        p.stdin.flush()  # kept open: the agent must not wait for its end
    return p


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the coordinator ended (exit {proc.returncode}) before {what}:\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def done_by(db: Path, host: str) -> int:
    return query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'done' AND host = ?", (host,))[0][0]


def assert_each_job_done_exactly_once(db: Path) -> None:
    states = dict(query(db, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert set(states) == {"done"}, states
    assert query(db, "SELECT job_id FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY job_id HAVING count(*) != 1") == []


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def sockets_of(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            out.append(target)
    return out


def children_of(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def status(cwd) -> dict:
    r = imgq(cwd, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {h["host"]: h for h in json.loads(r.stdout)["fleet"]}


def queue_slow_jobs(cwd: Path, inbox: Path) -> int:
    assert imgq(cwd, "scan", inbox).returncode == 0
    for op in SLOW_OPS:
        assert imgq(cwd, "enqueue", "--op", op).returncode == 0
    return query(cwd / "imgq.db", "SELECT count(*) FROM jobs")[0][0]


@pytest.fixture(scope="module")
def slow_inbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slow") / "inbox"
    samples.make_inbox(root, count=12, size=(800, 600), with_duplicate=False, with_broken=False, with_loose=False, with_rotated=True)
    return root


def tls_client(address: str) -> ssl.SSLSocket:
    """A plain standard-library TLS client (no pin, no imgq code)."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=20))
    return s


def read_frame(s) -> dict:
    (size,) = struct.unpack("!Q", _exactly(s, 8))
    body = _exactly(s, size)
    (n,) = struct.unpack("!I", body[:4])
    return json.loads(body[4 : 4 + n])


def _exactly(s, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def closed_by_server(s, timeout: float = 20.0) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionError, ssl.SSLError, OSError) as e:
        return not isinstance(e, TimeoutError)


# --- in process: the pieces -------------------------------------------------------------------


def test_listen_addresses_and_names():
    assert listen.parse_address("") == ("", 0)
    assert listen.parse_address(":7700") == ("", 7700)
    assert listen.parse_address("7700") == ("", 7700)
    assert listen.parse_address("10.0.0.5") == ("10.0.0.5", 0)
    assert listen.parse_address("coord.example:7700") == ("coord.example", 7700)
    assert listen.parse_address("[::1]:7700") == ("::1", 7700)
    for bad in ("a:b", "1.2.3.4:99999", "x y:1", "host;rm:1"):
        with pytest.raises(UsageError):
            listen.parse_address(bad)
    with pytest.raises(UsageError, match="port"):
        listen.parse_address("coord", default_port=None)
    assert listen.clean_name("slurm:1234.0", "1.2.3.4:5") == "slurm:1234.0"
    assert listen.clean_name("\x1b[31mevil name\n", "1.2.3.4:5") == "__31mevil_name"
    assert listen.clean_name(None, "1.2.3.4:5") == "tcp:1.2.3.4:5"
    assert len(listen.clean_name("x" * 500, "p")) == 80


def test_a_tls_stream_carries_both_directions_at_once_intact():
    """One reader and two writers on each side at once, 24 MB in all: what the link does
    (a reader thread, sender threads), which an ssl.SSLSocket must not be used for."""
    ctx, fp = tls.server_context()
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    blobs = [os.urandom(3 << 20) for _ in range(4)]
    got: dict[str, bytes] = {}

    def serve():
        conn, _ = srv.accept()
        st = tls.TlsStream(conn, ctx, server_side=True)
        st.handshake()
        run_side(st, "server")

    def run_side(st, who):
        writers = [threading.Thread(target=lambda b=b: st.write(b)) for b in blobs[:2]] if who == "server" else \
                  [threading.Thread(target=lambda b=b: st.write(b)) for b in blobs[2:]]
        for w in writers:
            w.start()
        got[who] = bytes(st.read(6 << 20))
        for w in writers:
            w.join()

    t = threading.Thread(target=serve)
    t.start()
    st = tls.TlsStream(socket.create_connection(("127.0.0.1", port)), tls.client_context(), server_side=False)
    st.handshake()
    assert st.peer_fingerprint() == fp
    run_side(st, "client")
    t.join(30)
    # each writer's blob arrives whole (writes are not interleaved), in either order
    assert got["client"] in (blobs[0] + blobs[1], blobs[1] + blobs[0])
    assert got["server"] in (blobs[2] + blobs[3], blobs[3] + blobs[2])
    srv.close()


def test_dial_checks_the_pin_before_anything_and_the_listener_admits_only_the_secret():
    arrivals, logs = [], []
    lst = listen.Listener("127.0.0.1", on_agent=arrivals.append, on_log=logs.append, hello_timeout=2).start()
    try:
        env = lst.agent_env()
        assert env[listen.ENV_CONNECT] == lst.advertise and lst.advertise.startswith("127.0.0.1:")
        good = listen.credentials(env, connect=None, fingerprint=None, where="test")
        # another run's certificate: refused by the agent before it sends a byte
        other = listen.Listener("127.0.0.1")
        try:
            with pytest.raises(listen.AgentRefused, match="not this run's coordinator"):
                listen.dial(lst.advertise, listen.Credentials(lst.advertise, good.secret, other.fingerprint), name="a", retry_for=0)
        finally:
            other.close()
        # another run's secret: refused by the coordinator
        with pytest.raises(listen.AgentRefused, match="wrong secret"):
            listen.dial(lst.advertise, listen.Credentials(lst.advertise, os.urandom(32), lst.fingerprint), name="b", retry_for=0)
        stream = listen.dial(lst.advertise, good, name="good agent")
        protocol.write_message(listen.StreamIO(stream), {"type": "hello", "protocol": protocol.PROTOCOL, "slots": 1})
        deadline = time.monotonic() + 10
        while not arrivals and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(a.name, a.hello["slots"]) for a in arrivals] == [("good_agent", 1)]
        assert arrivals[0].problems  # this hello names no version, no cores: unfit
        stream.close()
    finally:
        lst.close()
    assert any("wrong secret" in line for line in logs), logs
    assert any("without authenticating" in line for line in logs), logs  # the agent that hung up on the wrong pin
    assert all(re.search(r"from 127\.0\.0\.1:\d+", line) for line in logs), logs


def test_agent_credentials_never_on_the_command_line(tmp_path):
    r = imgq(tmp_path, "agent", "--connect", "127.0.0.1:1", "--secret", "00")
    assert r.returncode == 2 and "No such option" in r.stderr
    with pytest.raises(UsageError, match="IMGQ_AGENT_SECRET"):
        listen.credentials({listen.ENV_FINGERPRINT: "ab" * 32}, connect="h:1", fingerprint=None, where="stdin")
    with pytest.raises(UsageError, match="sha256"):
        listen.credentials({listen.ENV_SECRET: "ab" * 32, listen.ENV_FINGERPRINT: "xyz"}, connect="h:1", fingerprint=None, where="stdin")
    c = listen.credentials({listen.ENV_SECRET: "ab" * 32}, connect="h:1", fingerprint="SHA256:" + ":".join(["AB"] * 32), where="stdin")
    assert c.fingerprint == "ab" * 32 and c.connect == "h:1"


# --- real processes ---------------------------------------------------------------------------


def test_two_connect_back_agents_match_local_byte_for_byte(tmp_path):
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=3, size=(1200, 900))
    runs = {}
    for name in ("local", "listen"):
        cwd = tmp_path / name
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        assert imgq(cwd, "enqueue").returncode == 0
        assert imgq(cwd, "enqueue", "--op", "web|sharpness:1.5|gaussian:1.5", "--op", "thumb|gray").returncode == 0
        if name == "local":
            r = imgq(cwd, "work", "-j", "2")
            code, err = r.returncode, r.stderr
        else:
            p, creds = start_coordinator(cwd)
            # alone, it waits for agents (and says so) instead of ending
            time.sleep(1.5)
            assert p.poll() is None
            assert oct((cwd / "run.env").stat().st_mode & 0o777) == "0o600"
            a1 = start_agent(cwd, "--secret-file", cwd / "run.env")  # address from the file
            a2 = start_agent(cwd, "--connect", creds[listen.ENV_CONNECT], env={listen.ENV_NAME: "job-7"},
                             stdin_text=(cwd / "run.env").read_text())
            try:
                out, err = p.communicate(timeout=120)
                code = p.returncode
                for a in (a1, a2):
                    a.wait(15)  # the coordinator closed the connection: the agents exit
                    assert a.returncode == 0, a.communicate()[1]
            finally:
                for x in (p, a1, a2):
                    if x.poll() is None:
                        x.kill()
            assert "waiting for agents to connect to 127.0.0.1:" in err
            assert re.search(r"host tcp:[^:]+:\d+ joined: 127\.0\.0\.1:\d+", err) and re.search(r"host job-7 joined: 127\.0\.0\.1:\d+", err)
            assert not (cwd / "run.env").exists()  # the secret does not outlive the run
        assert code == 1, err  # the truncated JPEG fails, on both
        rows = query(cwd / "imgq.db", "SELECT f.path, a.name, a.path FROM artifacts a JOIN files f ON f.id = a.file_id")
        runs[name] = {(p_, n): (cwd / "imgq-store" / ap).read_bytes() for p_, n, ap in rows}
    assert runs["listen"].keys() == runs["local"].keys() and len(runs["local"]) >= 30
    assert [k for k in runs["local"] if runs["local"][k] != runs["listen"][k]] == []
    db = tmp_path / "listen" / "imgq.db"
    fleet = status(tmp_path / "listen")
    assert set(fleet) == {"job-7", next(h for h in fleet if h.startswith("tcp:"))}
    assert all(h["state"] == "stopped" and re.fullmatch(r"connected from 127\.0\.0\.1:\d+", h["reason"]) for h in fleet.values())
    assert all(done_by(db, h) > 0 for h in fleet)
    assert "connected from 127.0.0.1" in imgq(tmp_path / "listen", "status").stdout


def test_agents_writing_into_a_shared_store_match_local_byte_for_byte(tmp_path):
    """--shared-root and --shared-store, the cluster setting: an agent that sees the
    store writes its artifacts there itself and sends only their header (``up: ...,
    writes into the shared store``); one whose --shared-store is not this store (no
    marker of this database there) is told apart, warned about, and sends its artifacts
    as before. Either way the outputs are byte for byte local -j2's."""
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=3, size=(1200, 900), with_broken=False)
    runs = {}
    for name in ("local", "shared"):
        cwd = tmp_path / name
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        assert imgq(cwd, "enqueue").returncode == 0
        if name == "local":
            r = imgq(cwd, "work", "-j", "2")
            code, err = r.returncode, r.stderr
        else:
            (tmp_path / "elsewhere").mkdir()
            p, creds = start_coordinator(cwd, "--shared-root", tmp_path, "--shared-store", "-v")
            shares = start_agent(cwd, "--secret-file", cwd / "run.env", "--shared-root", tmp_path, "--shared-store", cwd / "imgq-store", "--name", "shares")
            apart = start_agent(cwd, "--secret-file", cwd / "run.env", "--shared-root", tmp_path, "--shared-store", tmp_path / "elsewhere", "--name", "apart")
            try:
                out, err = p.communicate(timeout=120)
                code = p.returncode
                for a in (shares, apart):
                    a.wait(15)
                    assert a.returncode == 0, a.communicate()[1]
            finally:
                for x in (p, shares, apart):
                    if x.poll() is None:
                        x.kill()
            assert re.search(r"host shares up: 1 slots, from 127\.0\.0\.1:\d+, writes into the shared store", err), err
            assert f"host apart does not write into this store ({tmp_path / 'elsewhere'} there is not an imgq store): its artifacts come over the connection" in err
            assert not re.search(r"host apart up: .*shared store", err)
            db = cwd / "imgq.db"
            assert done_by(db, "shares") > 0 and done_by(db, "apart") > 0
            assert_each_job_done_exactly_once(db)
            assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing written where it was not asked to
            store = cwd / "imgq-store"
            assert [q for q in store.rglob(".*") if q.name != ".imgq-store"] == []  # no staged or temporary leftovers
        assert code == 0, err
        rows = query(cwd / "imgq.db", "SELECT f.path, a.name, a.path FROM artifacts a JOIN files f ON f.id = a.file_id")
        runs[name] = {(p_, n): (cwd / "imgq-store" / ap).read_bytes() for p_, n, ap in rows}
    assert runs["shared"].keys() == runs["local"].keys() and len(runs["local"]) >= 18
    assert [k for k in runs["local"] if runs["local"][k] != runs["shared"][k]] == []


def test_hostile_connections_are_dropped_and_logged_and_the_run_completes(tmp_path, slow_inbox):
    queue_slow_jobs(tmp_path, slow_inbox)
    p, creds = start_coordinator(tmp_path)
    address = creds[listen.ENV_CONNECT]
    host, port = address.rsplit(":", 1)
    socks = {}
    try:
        # TCP that never speaks, and TLS that never authenticates: held open meanwhile
        socks["silent tcp"] = socket.create_connection((host, int(port)))
        socks["silent tls"] = tls_client(address)
        assert read_frame(socks["silent tls"])["type"] == "challenge"
        # not TLS at all
        s = socks["garbage tcp"] = socket.create_connection((host, int(port)))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4000))
        # TLS, then garbage as the first frame
        s = socks["garbage frame"] = tls_client(address)
        read_frame(s)
        s.sendall(os.urandom(2000))
        # TLS, then a frame claiming 100 MB (its header small: the blob is what is refused)
        s = socks["oversize frame"] = tls_client(address)
        read_frame(s)
        head = json.dumps({"type": "auth", "proof": "00"}).encode()
        s.sendall(struct.pack("!QI", 100_000_000, len(head)) + head + b"\0" * 1000)
        # TLS, then a frame whose header alone is over the 4 KiB limit
        s = socks["oversize header"] = tls_client(address)
        read_frame(s)
        s.sendall(struct.pack("!QI", 70_000, 65_000) + b"{" * 1000)
        # the real protocol, a proof made with another secret
        s = socks["wrong secret"] = tls_client(address)
        ch = bytes.fromhex(read_frame(s)["challenge"])
        for piece in protocol.encode({"type": "auth", "proof": tls.proof(os.urandom(32), ch, creds[listen.ENV_FINGERPRINT]), "name": "intruder"}):
            s.sendall(piece)
        # no secret at all: hello straight away
        s = socks["no secret"] = tls_client(address)
        read_frame(s)
        for piece in protocol.encode({"type": "hello", "protocol": 1, "slots": 8}):
            s.sendall(piece)
        for what in ("garbage tcp", "garbage frame", "oversize frame", "oversize header", "wrong secret", "no secret"):
            assert closed_by_server(socks[what], 5), f"{what}: still open"
        ports = {what: s.getsockname()[1] for what, s in socks.items()}
        # an agent with the right secret but another run's certificate pinned refuses to talk
        wrong_pin = start_agent(tmp_path, "--connect", address, env={listen.ENV_SECRET: creds[listen.ENV_SECRET], listen.ENV_FINGERPRINT: "ab" * 32})
        _, werr = wrong_pin.communicate(timeout=30)
        assert wrong_pin.returncode == 1 and "not this run's coordinator" in werr and "nothing was sent" in werr
        for what in ("silent tcp", "silent tls"):  # dropped at the 10 s deadline, not held forever
            assert closed_by_server(socks[what], 15), f"{what}: still open"
        assert p.poll() is None  # none of it ended the run, which waits for a real agent
        good = start_agent(tmp_path, "--secret-file", tmp_path / "run.env")
        try:
            out, err = p.communicate(timeout=120)
        finally:
            if good.poll() is None:
                good.wait(10)
        assert p.returncode == 0, err
    finally:
        for s in socks.values():
            s.close()
        if p.poll() is None:
            p.kill()
    assert_each_job_done_exactly_once(tmp_path / "imgq.db")
    refused = {int(m.group(1)): m.group(2) for m in re.finditer(r"refused a connection from 127\.0\.0\.1:(\d+): (.*)", err)}
    expected = {"silent tcp": "no TLS handshake within 10 s", "silent tls": "no proof of the secret within 10 s",
                "garbage tcp": "not a TLS client", "garbage frame": "not an authentication", "oversize frame": "more than it can carry",
                "oversize header": "bad header length", "wrong secret": "wrong secret", "no secret": "not an authentication"}
    for what, why in expected.items():
        assert why in refused.get(ports[what], ""), f"{what} (port {ports[what]}): {refused.get(ports[what])!r}\n{err}"
    assert len(status(tmp_path)) == 1  # only the good agent joined
    assert "intruder" not in err


def test_secret_is_not_on_the_agents_command_line(tmp_path, slow_inbox):
    queue_slow_jobs(tmp_path, slow_inbox)
    p, creds = start_coordinator(tmp_path)
    agents = [start_agent(tmp_path, "--connect", creds[listen.ENV_CONNECT], stdin_text=(tmp_path / "run.env").read_text()),
              start_agent(tmp_path, "--connect", creds[listen.ENV_CONNECT], env={k: v for k, v in creds.items() if k != listen.ENV_CONNECT})]
    try:
        db = tmp_path / "imgq.db"
        wait_for(lambda: len(status(tmp_path)) == 2 and all(h["state"] == "up" for h in status(tmp_path).values()), 60, "both agents up", p)
        secret = creds[listen.ENV_SECRET]
        for a in agents:
            cmdline = Path(f"/proc/{a.pid}/cmdline").read_bytes()
            assert b"--connect" in cmdline and secret.encode() not in cmdline
            # its slots do not hold its connection: killed, the agent's end is seen at once
            assert sockets_of(a.pid) and [s for pid in children_of(a.pid) for s in sockets_of(pid)] == []
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert_each_job_done_exactly_once(db)
    finally:
        for x in (p, *agents):
            if x.poll() is None:
                x.kill()


def test_killed_tcp_agent_loses_no_job_and_runs_none_twice(tmp_path, slow_inbox):
    total = queue_slow_jobs(tmp_path, slow_inbox)
    # leases far longer than the test: jobs come back only because the loss was noticed
    p, creds = start_coordinator(tmp_path, "--lease", "300", "--prefetch", "1")
    doomed = start_agent(tmp_path, "--secret-file", tmp_path / "run.env", env={listen.ENV_NAME: "doomed"})
    survivor = start_agent(tmp_path, "--secret-file", tmp_path / "run.env", env={listen.ENV_NAME: "survivor"})
    db = tmp_path / "imgq.db"
    try:
        wait_for(lambda: done_by(db, "doomed") and done_by(db, "survivor"), 90, "both agents to finish a job", p)
        held = query(db, "SELECT count(*) FROM jobs WHERE state = 'leased' AND host = 'doomed'")[0][0]
        fault = time.time()
        os.kill(doomed.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=120)
        survivor.wait(15)
    finally:
        for x in (p, doomed, survivor):
            if x.poll() is None:
                x.kill()
    assert p.returncode == 0, err
    assert time.time() - fault < 90  # not waiting out a 300 s lease
    assert held >= 1
    assert_each_job_done_exactly_once(db)
    later = query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done' AND at > ?", (fault + 1,))
    assert later == [("survivor",)]
    assert done_by(db, "survivor") < total
    fleet = status(tmp_path)
    assert fleet["doomed"]["state"] == "benched" and fleet["doomed"]["lost"] == 1
    assert re.fullmatch(r"agent closed its connection from 127\.0\.0\.1:\d+ \(ended or killed\)", fleet["doomed"]["reason"])
    assert "host doomed benched" in err
    assert survivor.returncode == 0


def test_busy_agent_exits_when_its_coordinator_is_killed(tmp_path, slow_inbox):
    queue_slow_jobs(tmp_path, slow_inbox)
    p, creds = start_coordinator(tmp_path, "--lease", "300")
    a = start_agent(tmp_path, "--secret-file", tmp_path / "run.env", env={listen.ENV_NAME: "orphan"})
    try:
        wait_for(lambda: done_by(tmp_path / "imgq.db", "orphan"), 90, "the agent to finish a job", p)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        a.wait(15)  # its connection closed: it stops its slots and exits, busy or not
    finally:
        for x in (p, a):
            if x.poll() is None:
                x.kill()
    assert a.returncode is not None
    assert not list((tmp_path / "agents").glob("s-*"))  # its session folder went with it


class ProcessLauncher:
    """The launcher contract a scheduler's launcher (Slurm's) fulfils, with plain local
    processes: the agent's command line from ``agent_argv``, its credentials on stdin
    (``credentials``), a label in its environment; stopped when the run ends."""

    def __init__(self, n: int, cwd: Path):
        self.n, self.cwd, self.procs, self.ticks = n, cwd, [], 0

    def start(self, listener) -> None:
        argv = [sys.executable, "-m", "imgq", *listener.agent_argv(()), "--slots", "1", "--workdir", str(self.cwd / "agents")]
        for i in range(self.n):
            p = subprocess.Popen(argv, env=imgq_env({listen.ENV_NAME: f"launched-{i}"}), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            p.stdin.write(listener.credentials())
            p.stdin.close()
            self.procs.append(p)

    def tick(self) -> list[tuple]:
        self.ticks += 1
        return []

    def stop(self) -> None:
        for p in self.procs:
            try:
                p.wait(15)  # their connection closed: they exit by themselves
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_launcher_starts_agents_that_join_the_run(tmp_path, slow_inbox):
    from imgq.config import load_settings
    from imgq.fleet import coordinator
    from imgq.ledger.database import DB

    total = queue_slow_jobs(tmp_path, slow_inbox)
    settings = load_settings(None, str(tmp_path / "imgq.db"))
    launcher = ProcessLauncher(2, tmp_path)
    reports = []
    db = DB(tmp_path / "imgq.db")
    try:
        summary = coordinator.work(settings, coordinator.FleetOptions(listen="127.0.0.1", launcher=launcher), db, on_report=reports.append)
    finally:
        db.close()
    assert summary.done == total and not summary.failed
    assert [p.returncode for p in launcher.procs] == [0, 0] and launcher.ticks > 0
    assert_each_job_done_exactly_once(tmp_path / "imgq.db")
    assert all(done_by(tmp_path / "imgq.db", f"launched-{i}") for i in range(2))
    listening = [r for r in reports if r[0] == "listening"]
    assert len(listening) == 1 and listening[0][2].startswith("127.0.0.1:")
    assert not list(tmp_path.glob("*.env"))  # no --agent-file: nothing written


def test_run_with_an_agent_started_by_hand_processes_archives_and_collects(tmp_path):
    """`imgq run --listen`: the work step waits for an agent that connects back (started by
    hand, its secret on stdin), then this machine archives and collects what it made."""
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=2, size=(640, 480), with_broken=False,
                               with_duplicate=False, with_rotated=False, with_loose=False)
    originals = {p.name: p.read_bytes() for p in inbox.root.rglob("*.jpg")}
    dest = tmp_path / "A"
    dest.mkdir()
    p = start(tmp_path, "run", inbox, "--to", dest, "--listen", "127.0.0.1", "--agent-file", tmp_path / "run.env")
    agent = None
    try:
        wait_for(lambda: (tmp_path / "run.env").exists(), 60, "the run listens for agents", proc=p)
        time.sleep(1.0)
        assert p.poll() is None  # no agent yet: the work step waits for one
        creds = listen.parse_credentials((tmp_path / "run.env").read_text(), where="run.env")
        agent = start_agent(tmp_path, "--connect", creds[listen.ENV_CONNECT], env={listen.ENV_NAME: "by-hand"},
                            stdin_text=(tmp_path / "run.env").read_text())
        out, err = p.communicate(timeout=120)
        agent.wait(15)  # the run ended its work step and closed the connection: the agent exits
        assert agent.returncode == 0, agent.communicate()[1]
    finally:
        for x in (p, agent):
            if x is not None and x.poll() is None:
                x.kill()
                x.communicate()
    assert p.returncode == 0, err
    db = tmp_path / "imgq.db"
    assert sorted(out.split()) == sorted(i for (i,) in query(db, "SELECT id FROM files"))
    assert "listening on 127.0.0.1:" in err and re.search(r"^imgq: work: host by-hand joined: 127\.0\.0\.1:\d+$", err, re.M), err
    assert_each_job_done_exactly_once(db)
    assert query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done'") == [("by-hand",)]
    assert set(s for (s,) in query(db, "SELECT state FROM files")) == {"collected"}
    assert not [q for q in inbox.root.rglob("*") if q.is_file()]  # collected: the inbox is empty, each original verified at A
    copied = {q.name: q.read_bytes() for q in dest.rglob("*.jpg") if q.name in originals}
    assert copied == originals
    assert not (tmp_path / "run.env").exists()  # the secret does not outlive the run
    [(args,)] = query(db, "SELECT args FROM runs WHERE command = 'run'")
    assert json.loads(args)["listen"] == "127.0.0.1"
