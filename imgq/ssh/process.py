"""Running commands on a host: one-shot commands (``run``) and a long-lived process whose
stdin/stdout are a byte pipe over one SSH channel (``start_process``: the remote agent).

Remote commands are argv lists; every argument is quoted on its way into the remote shell
(``remote_command``). A lost host or a command that does not finish in time is
``HostUnreachable``.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import fabric
import paramiko

from imgq.errors import HostUnreachable
from imgq.ssh.connect import CHANNEL_WINDOW, DEFAULT_IO_TIMEOUT, NETWORK_ERRORS, describe, live_transport, translate
from imgq.ssh.hostspec import remote_command


@dataclass
class RemoteResult:
    argv: list[str]
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _open_exec(conn, argv, doing, window=None) -> paramiko.Channel:
    t = live_transport(conn, doing)
    try:
        chan = t.open_session(window_size=window, timeout=conn.connect_timeout)
        chan.exec_command(remote_command(argv))
    except NETWORK_ERRORS as exc:
        raise translate(conn, exc, doing) from exc
    return chan


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except Exception:  # the reader notices the lost channel and reports it
        pass


def run(
    conn: fabric.Connection,
    argv: list[str],
    *,
    input: bytes | None = None,
    timeout: float = DEFAULT_IO_TIMEOUT,
) -> RemoteResult:
    """Run ``argv`` on the host (no terminal), feed it ``input``, collect its output.

    A non-zero exit is returned, not raised. HostUnreachable if the host is lost or the
    command has not finished after ``timeout`` seconds (the channel is then closed).
    """
    doing = f"running {argv[0]}"
    chan = _open_exec(conn, argv, doing)
    try:
        if input:
            # fed from a thread: a command that answers as it reads (cat) would otherwise
            # fill our receive window while we are still sending, and both sides would wait
            threading.Thread(target=_feed, args=(chan, input), daemon=True).start()
        else:
            chan.shutdown_write()
        return _collect(conn, chan, argv, doing, timeout)
    finally:
        chan.close()


# A piece of stdin handed to paramiko at once (a memoryview of the caller's buffer): its
# sendall re-slices what is left after every packet, which for a whole bytes object is a
# copy of the rest each time (quadratic in the buffer); a view is sliced for free.
SEND_PIECE = 1 << 20


def run_feeding(
    conn: fabric.Connection,
    argv: list[str],
    feed: Callable[[Callable[[bytes], None]], object],
    *,
    timeout: float = DEFAULT_IO_TIMEOUT,
    io_timeout: float = DEFAULT_IO_TIMEOUT,
) -> tuple[RemoteResult, object]:
    """Run ``argv`` on the host with its stdin streamed by ``feed(write)``: ``feed`` calls
    ``write(data)`` as it goes (a large file is never held whole) and returns what it
    likes; then EOF, and the output is collected as ``run`` collects it, within
    ``timeout`` seconds. Returns (the result, what ``feed`` returned).

    A command that ends before reading all of its input is no error here: what is left
    is not sent (``write`` returns at once) and its exit status and stderr are returned.
    If ``feed`` raises, the command gets EOF and is waited for (briefly) before the
    exception goes on, so nothing it does outlives this call. HostUnreachable if the
    host is lost, or takes more than ``io_timeout`` seconds to take more input.

    The output is read once the input is sent: for commands that answer at the end (a
    command writing more than a channel window while it reads would wait for ever)."""
    doing = f"running {argv[0]}"
    chan = _open_exec(conn, argv, doing)
    chan.settimeout(io_timeout)
    ended = False

    def write(data) -> None:
        nonlocal ended
        if ended:
            return
        view = memoryview(data)
        try:
            for at in range(0, len(view), SEND_PIECE):
                chan.sendall(view[at : at + SEND_PIECE])
        except socket.timeout as exc:
            raise translate(conn, exc, f"sending to {argv[0]}") from exc
        except NETWORK_ERRORS as exc:
            if not (chan.closed or chan.eof_received or chan.exit_status_ready()) or not chan.get_transport().is_active():
                raise translate(conn, exc, f"sending to {argv[0]}") from exc
            ended = True  # the command stopped reading: its status says why
        finally:
            view.release()

    try:
        try:
            fed = feed(write)
        except BaseException:
            try:
                chan.shutdown_write()
                _collect(conn, chan, argv, doing, min(timeout, 30.0))
            except Exception:
                pass
            raise
        if not ended:
            try:
                chan.shutdown_write()
            except NETWORK_ERRORS:
                pass  # closed meanwhile: its status says why
        return _collect(conn, chan, argv, doing, timeout), fed
    finally:
        chan.close()


def _collect(conn, chan: paramiko.Channel, argv, doing: str, timeout: float) -> RemoteResult:
    """The command's stdout, stderr and exit status, once it has ended and closed its output."""
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            while chan.recv_ready():
                out += chan.recv(1 << 20)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 20)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                if chan.eof_received or chan.closed:
                    break
            if not chan.get_transport().is_active():
                raise EOFError("connection lost")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"{argv[0]} did not finish within {timeout:g} s")
            select.select([chan], [], [], min(left, 0.5))
        status = chan.recv_exit_status()
        if not chan.eof_received:
            # closed without the end of its output: the connection died, not the command
            raise EOFError("connection lost")
    except NETWORK_ERRORS as exc:
        raise translate(conn, exc, doing) from exc
    return RemoteResult(list(argv), status, bytes(out), bytes(err))


class RemoteProcess:
    """A remote command whose stdin/stdout are a byte pipe over one SSH channel.

    stderr is drained in the background (so it can never stall stdout) and its tail kept
    for error messages. Reads wait at most ``io_timeout`` seconds, then HostUnreachable:
    a hung host or agent is noticed, not waited for. What travels over the pipe is the
    caller's (the agent protocol's frames: ``imgq.fleet.protocol``).
    """

    STDERR_TAIL = 64 * 1024

    def __init__(self, conn: fabric.Connection, chan: paramiko.Channel, argv, io_timeout):
        self.conn, self.channel, self.argv = conn, chan, list(argv)
        self._stderr = bytearray()
        self._lines = bytearray()  # read by read_line past its line
        chan.settimeout(io_timeout)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        while True:
            try:
                chunk = self.channel.recv_stderr(65536)
            except socket.timeout:
                if self.channel.closed:
                    return
                continue
            except Exception:
                return
            if not chunk:
                return
            self._stderr += chunk
            del self._stderr[: -self.STDERR_TAIL]

    def stderr_tail(self) -> str:
        return bytes(self._stderr).decode(errors="replace")

    def _lost(self, exc: BaseException, doing: str) -> HostUnreachable:
        """HostUnreachable saying whether the process ended or the connection did."""
        chan = self.channel
        if chan.eof_received:
            # the process closed its output: report how it ended, with what it said
            chan.status_event.wait(1.0)
            self._drain.join(1.0)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
            how = f"exit status {status}" if status != -1 else "killed by a signal?"
            err = HostUnreachable(f"{describe(self.conn)}: {self.argv[0]} ended ({how}) "
                                  f"while {doing}")
        elif chan.closed:
            err = translate(self.conn, EOFError(), doing)
        else:
            err = translate(self.conn, exc, doing)
        tail = self.stderr_tail().strip()
        if tail:
            err.args = (f"{err.args[0]}; {self.argv[0]} said: {tail[-500:]}",)
        return err

    def set_timeout(self, seconds: float | None) -> None:
        self.channel.settimeout(seconds)

    def write(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except NETWORK_ERRORS as exc:
            raise self._lost(exc, f"sending to {self.argv[0]}") from exc

    def read_exact(self, n: int, first: bytes = b"") -> bytes | bytearray:
        """Exactly ``n`` bytes of stdout; HostUnreachable on EOF or timeout.

        The bytes land in one buffer of size ``n`` as they arrive (not a list of chunks
        joined at the end, which held every payload twice); ``first``: bytes of them
        already received."""
        buf, got = bytearray(n), len(first)
        view = memoryview(buf)
        view[:got] = first
        try:
            while got < n:
                chunk = self.channel.recv(min(n - got, 1 << 20))
                if not chunk:
                    raise EOFError("end of output")
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
        except NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        finally:
            view.release()
        return buf

    def read_line(self, limit: int) -> bytes:
        """One line of stdout without its newline, for a process that answers in lines
        (what follows it in the same read is kept for the next ``read_line``; do not mix
        with ``read``). HostUnreachable on EOF, timeout, or a line longer than ``limit``."""
        buf = self._lines
        try:
            while (end := buf.find(b"\n")) < 0:
                if len(buf) > limit:
                    raise EOFError(f"a line longer than {limit} bytes")
                chunk = self.channel.recv(max(limit, 4096))
                if not chunk:
                    raise EOFError("end of output")
                buf += chunk
        except NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line

    def read(self, n: int) -> bytes | bytearray:
        """For ``protocol.read_message``: exactly ``n`` bytes; b"" if the process closed
        its output before the first of them (a clean end between frames); HostUnreachable
        if the connection ended, the process ended mid-frame, or nothing came in time."""
        try:
            first = self.channel.recv(n)
        except NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        if not first:
            if not self.channel.eof_received:
                raise self._lost(EOFError(), f"reading from {self.argv[0]}")
            return b""
        if len(first) == n:
            return first
        return self.read_exact(n, first)

    def close_stdin(self) -> None:
        """Send EOF: the process sees the end of its input."""
        try:
            self.channel.shutdown_write()
        except NETWORK_ERRORS:
            pass

    def wait(self, timeout: float = DEFAULT_IO_TIMEOUT) -> int:
        """The exit status; HostUnreachable if it has not exited within ``timeout``."""
        if not self.channel.status_event.wait(timeout):
            raise HostUnreachable(
                f"{describe(self.conn)}: {self.argv[0]} did not exit within {timeout:g} s"
            )
        status = self.channel.recv_exit_status()
        if status == -1 and not self.channel.eof_received:
            raise self._lost(EOFError(), f"waiting for {self.argv[0]}")
        return status

    def close(self) -> None:
        """Close the channel; the process sees EOF on stdin and EPIPE on its next write."""
        self.channel.close()

    def __enter__(self) -> "RemoteProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_process(
    conn: fabric.Connection,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    io_timeout: float | None = DEFAULT_IO_TIMEOUT,
) -> RemoteProcess:
    """Start ``argv`` on the host with pipes (no terminal); see RemoteProcess.

    ``env`` is passed through ``env NAME=VALUE`` (sshd drops requested variables by default).
    """
    if env:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"not an environment variable name: {name!r}")
    command = ["env", *(f"{k}={v}" for k, v in env.items()), *argv] if env else argv
    chan = _open_exec(conn, command, f"starting {argv[0]}", window=CHANNEL_WINDOW)
    return RemoteProcess(conn, chan, argv, io_timeout)
