"""The coordinator's side of one agent: its transport (an SSH connection with ``imgq
agent`` started over it, or a TLS connection the agent made to ``--listen``:
``imgq.fleet.listen``), a reader thread for the agent's messages and sender threads for
the jobs. Both transports carry the same frames and get the same checks below.

The link never touches the database: it hands what arrives to a callback, and the fleet
(one thread) decides. What it guarantees:

- ``open`` connects through ``imgq.ssh`` (ssh_config, keys, ProxyJump, host keys
  refused unless opted in), starts the agent with every argument quoted, and waits for
  its hello; a hello that shows the host unfit raises ``PreflightFailed``, so a host
  missing a library is never given a job.
- Jobs are sent by ``transfers`` sender threads, each reading an input from disk while
  another is on the wire. The input goes as raw bytes after a small JSON header (no
  name from the inbox in it) or, with a shared root, as a path under that root. A
  video's input is a ``protocol.Blob`` streamed from disk in 1 MiB pieces.
- Every read from the agent waits at most ``host_timeout`` seconds; the agent beats
  every second, so silence means the host is dead, hung or cut off, and the link reports
  it lost.
- Every frame from the agent is checked before its blob is read: its header at most
  ``protocol.REPLY_HEADER`` bytes, its blob at most what ``reply_limit(header, size)``
  allows (the fleet derives it from the job's recipe and the settings, and refuses a
  reply that breaks the protocol); big blobs are streamed into ``spill_dir``. A frame
  that fails is the agent misbehaving: the link is lost with the reason, marked as such.
"""

from __future__ import annotations

import queue as stdqueue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imgq import ssh
from imgq.fleet import hosts, protocol
from imgq.errors import HostUnreachable
from imgq.fleet.hosts import HostEntry, PreflightFailed

SMALL_FRAME = 64 * 1024  # a frame whose blob is at most this is written in one piece
AGENT_START_TIMEOUT = 60.0  # a cold Python importing Pillow and OpenCV on a slow disk


def agent_argv(entry: HostEntry, *, slots: int | None, shared_root: str | None, idle_timeout: float | None = None) -> list[str]:
    """The remote command line that starts the agent (a list: every word gets quoted)."""
    argv = [*entry.remote_imgq, "agent"]
    if slots:
        argv += ["--slots", str(slots)]
    if shared_root:
        argv += ["--shared-root", shared_root]
    if idle_timeout:
        argv += ["--idle-timeout", f"{idle_timeout:g}"]
    return argv


def start_agent(entry: HostEntry, *, ssh_config=None, accept_new_host_keys=False, connect_timeout=None, slots=None, shared_root=None) -> tuple[ssh.Connection, ssh.RemoteProcess, dict]:
    """Connect, start the agent, read its hello: (connection, process, hello).

    HostUnreachable when the host cannot be reached; PreflightFailed when the agent does
    not start (imgq missing, a library failing at import) or its hello shows a problem.
    """
    conn = ssh.connect(entry.spec, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys, connect_timeout=connect_timeout)
    try:
        argv = agent_argv(entry, slots=slots, shared_root=shared_root)
        proc = ssh.start_process(conn, argv, io_timeout=AGENT_START_TIMEOUT)
        try:
            msg = protocol.read_message(proc.read, max_header=protocol.REPLY_HEADER)
        except HostUnreachable as e:
            if proc.channel.eof_received:  # the command ran and ended: it is the host's setup
                raise PreflightFailed(_start_failure(proc, e)) from None
            raise
        except protocol.ProtocolError as e:
            raise PreflightFailed(f"{' '.join(argv[:2])} does not speak the agent protocol ({e})") from None
        if msg is None:
            raise PreflightFailed(_start_failure(proc, None))
        hello = msg[0]
        if hello.get("type") != "hello" or type(hello.get("slots")) is not int or hello["slots"] < 1:
            raise PreflightFailed(f"{' '.join(argv[:2])} does not speak the agent protocol (its first message is not a hello with slots)")
        problems = hosts.check_hello(hello)
        if problems:
            err = PreflightFailed("; ".join(problems))
            err.hello = hello
            raise err
        return conn, proc, hello
    except BaseException:
        ssh.close(conn)
        raise


_LIBRARIES = {"cv2": "OpenCV", "PIL": "Pillow", "numpy": "NumPy", "fabric": "Fabric", "imgq": "imgq itself"}
_IMPORT_LINE = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][\w]*)")


def _start_failure(proc: ssh.RemoteProcess, exc) -> str:
    """Why the agent did not start, in one line: which import failed (from its traceback),
    the last line it printed, its exit status."""
    proc.channel.status_event.wait(2.0)
    status = proc.channel.recv_exit_status() if proc.channel.exit_status_ready() else None
    lines = [line.rstrip() for line in proc.stderr_tail().splitlines() if line.strip()]
    said = lines[-1].strip() if lines else (str(exc) if exc else "no output")
    imports = [m.group(1) for m in map(_IMPORT_LINE.match, lines) if m]
    what = ""
    if imports and "Error" in said:
        lib = imports[-1]
        what = f"cannot import {lib}" + (f" ({_LIBRARIES[lib]})" if lib in _LIBRARIES else "") + ": "
    hint = " (command not found: give the path with --remote-imgq or in the hosts file)" if status == 127 else ""
    return f"agent did not start: `{' '.join(proc.argv)}` exited {status}{hint}: {what}{said[:400]}"


class AgentLink:
    """One running agent. ``on_message(link, header, blob)`` is called from the reader
    thread for every message (it owns ``blob``, a ``protocol.Blob``, and may raise
    ``protocol.ProtocolError`` to refuse it); ``on_lost(link, reason, misbehaved)`` once,
    when the link dies (``misbehaved``: the agent broke the protocol, not the network).
    ``reply_limit(header, blob_size)`` says how many blob bytes a message may carry (or
    raises ProtocolError); ``read_input(link, claim, header, path)`` returns the bytes to
    send for a job (or a ``protocol.Blob`` to stream, which the link closes once sent),
    or None."""

    def __init__(self, name: str, transport, hello: dict, *, host_timeout: float, transfers: int,
                 on_message: Callable, on_lost: Callable, read_input: Callable,
                 reply_limit: Callable[[dict, int], int] = lambda header, size: 0, spill_dir: Path | None = None):
        self.name, self.transport, self.hello = name, transport, hello
        self.slots = int(hello["slots"])
        self.host_timeout = host_timeout
        self.on_message, self.on_lost, self.read_input = on_message, on_lost, read_input
        self.reply_limit, self.spill_dir = reply_limit, spill_dir
        self.outbox: stdqueue.Queue = stdqueue.Queue()
        self.write_lock = threading.Lock()
        self.closed = threading.Event()
        self.last_heard = time.monotonic()
        self.bytes_out = self.bytes_in = 0
        self.beat: dict = {}
        transport.set_timeout(host_timeout)
        self.threads = [threading.Thread(target=self._reader, daemon=True, name=f"{self.name}-reader")]
        self.threads += [threading.Thread(target=self._sender, daemon=True, name=f"{self.name}-send{i}") for i in range(max(1, transfers))]
        for t in self.threads:
            t.start()

    # --- sending -----------------------------------------------------------------------

    def send_job(self, claim, header: dict, input_path: Path | None) -> None:
        """Queue a job: its input is read (if staged) and sent by a sender thread."""
        self.outbox.put((claim, header, input_path))

    def send(self, header: dict) -> None:
        """Queue a control message (ping, cancel)."""
        self.outbox.put((None, header, None))

    def _sender(self) -> None:
        while not self.closed.is_set():
            try:
                claim, header, path = self.outbox.get(timeout=0.5)
            except stdqueue.Empty:
                continue
            blob = b""
            if path is not None:
                blob = self.read_input(self, claim, header, path)
                if blob is None:
                    continue  # unreadable here: the fleet has settled it already
            try:
                if isinstance(blob, protocol.Blob):
                    self._write_streamed(header, blob)
                else:
                    self._write(header, blob)
            except HostUnreachable as e:
                self.lose(str(e))
                return
            except OSError as e:  # a file of a streamed frame failed here mid-frame: the frame cannot be finished
                self.lose(f"cannot finish sending job {header.get('job')}: {e.strerror or e}")
                return

    def _write_streamed(self, header: dict, blob: protocol.Blob) -> None:
        """A frame whose input is streamed from disk (a video) in ``protocol.CHUNK``
        pieces, never held whole: other frames wait until it has gone."""
        first, pieces = protocol.encode_streamed(header, blob)
        try:
            with self.write_lock:
                self.transport.write(memoryview(first))
                for piece in pieces:
                    self.transport.write(piece)
                    self.bytes_out += len(piece)
        finally:
            blob.close()
        self.bytes_out += len(first)

    def _write(self, header: dict, blob) -> None:
        pieces = protocol.encode(header, blob)
        if len(pieces[1]) <= SMALL_FRAME:  # one write, one record or packet, not two
            pieces = [bytes(pieces[0]) + bytes(pieces[1]), b""]
        with self.write_lock:
            for piece in filter(len, pieces):
                # a memoryview: paramiko's sendall slices what it has left to send after
                # each packet, and slicing bytes copies, which made a 6 MB photo cost
                # ~150 copies of its remainder (5x the CPU of the crypto itself)
                self.transport.write(memoryview(piece))
        self.bytes_out += len(pieces[0]) + len(pieces[1])

    # --- receiving ---------------------------------------------------------------------

    def _read(self, n: int):
        data = self.transport.read(n)
        self.bytes_in += len(data)
        self.last_heard = time.monotonic()  # a big frame arriving slowly is not silence
        return data

    def _limit(self, header: dict, blob_size: int) -> int:
        if header["type"] in ("done", "error"):
            return self.reply_limit(header, blob_size)
        return 0  # hello, beat, fatal and types a newer agent may send carry no blob

    def _reader(self) -> None:
        from imgq import store

        while not self.closed.is_set():
            try:
                msg = protocol.read_message(self._read, limit=self._limit, max_header=protocol.REPLY_HEADER,
                                            spill_dir=self.spill_dir, spill_name=lambda: store.temp_name("reply"))
            except HostUnreachable as e:
                self.lose(str(e))
                return
            except protocol.ProtocolError as e:
                self.lose(f"bad message from the agent: {e}", misbehaved=True)
                return
            except OSError as e:  # spilling a big reply into our own store failed
                self.lose(f"cannot take a reply into {self.spill_dir}: {e.strerror or e}")
                return
            if msg is None:
                self.lose(self.transport.why_ended())
                return
            header, blob = msg
            if header["type"] == "beat":
                self.beat = header
            elif header["type"] == "fatal":
                self.lose(f"agent gave up: {str(header.get('message'))[:300]}", misbehaved=True)
                return
            else:
                try:
                    self.on_message(self, header, blob)
                except protocol.ProtocolError as e:
                    blob.close()
                    self.lose(f"bad message from the agent: {e}", misbehaved=True)
                    return

    # --- ending ------------------------------------------------------------------------

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    def lose(self, reason: str, *, misbehaved: bool = False) -> None:
        """The link is dead: close it and tell the fleet (once)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._close_quietly()
        self.on_lost(self, reason, misbehaved)

    def close(self) -> None:
        """End the session on purpose: the agent sees EOF, stops its slots and cleans up."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.transport.end()
        threading.Thread(target=self._close_quietly, kwargs={"grace": 2.0}, daemon=True).start()

    def _close_quietly(self, grace: float = 0.0) -> None:
        try:
            self.transport.close(grace)
        except Exception:
            pass


class SshTransport:
    """The agent's stdin/stdout over its SSH channel, as ``AgentLink`` uses a transport
    (``imgq.fleet.listen.TcpTransport`` is the other one)."""

    def __init__(self, conn: ssh.Connection, proc: ssh.RemoteProcess):
        self.conn, self.proc = conn, proc
        self.set_timeout, self.write, self.read = proc.set_timeout, proc.write, proc.read

    def end(self) -> None:
        """EOF on the agent's stdin: it stops its slots and exits."""
        self.proc.close_stdin()

    def why_ended(self) -> str:
        return f"agent ended: {self.proc.stderr_tail().strip()[-300:] or 'no message'}"

    def close(self, grace: float = 0.0) -> None:
        if grace:
            self.proc.channel.status_event.wait(grace)
        self.proc.close()
        ssh.close(self.conn)


def check(entry: HostEntry, **kw) -> dict:
    """``imgq hosts check`` for one host: its hello and verdict, never an exception."""
    started = time.monotonic()
    out = {"host": entry.name, "ok": False, "command": " ".join(agent_argv(entry, slots=kw.get("slots"), shared_root=None))}
    try:
        conn, proc, hello = start_agent(entry, **kw)
    except (HostUnreachable, PreflightFailed) as e:
        out["problem"] = str(e)
        out["stage"] = "preflight" if isinstance(e, PreflightFailed) else "connect"
        out.update(_facts(getattr(e, "hello", None) or {}))
        out["seconds"] = round(time.monotonic() - started, 2)
        return out
    proc.close_stdin()
    try:
        proc.wait(10)
    except HostUnreachable:
        pass
    ssh.close(conn)
    out.update(_facts(hello), ok=True, seconds=round(time.monotonic() - started, 2))
    return out


def _facts(hello: dict) -> dict:
    return {k: hello[k] for k in ("version", "python", "cores", "slots", "free_disk", "libs") if k in hello}
