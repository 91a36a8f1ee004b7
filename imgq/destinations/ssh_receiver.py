"""One long-lived program per connection on an ``ssh://`` destination's host that
receives many copies: the host's ``python3`` runs ``RECEIVER`` (below), and every copy
made over that connection is a request on its stdin, answered on its stdout. A copy then
starts no program there (the shell commands of ``ssh_scripts._PUT_SCRIPT`` start a shell,
``dd``, ``wc`` and a hash program for each), which is what made imgq's copies over SSH
slower than rclone's (docs/archive.md, "Throughput, measured").

The receiver does what ``_PUT_SCRIPT`` does, with the same exit codes: the killed copies
of the name are removed (new copies), the temporary name is created, never over an
existing file (``O_EXCL``, ``O_NOFOLLOW``), or a killed copy's part of exactly the
expected length is continued; the bytes are written and fsynced, then read back from the
file and answered as "SIZE SHA256". The rename into place and the folder's fsync stay
with the caller (SFTP). Paths travel as length-prefixed bytes, never in a command line or
script. A host without a usable ``python3`` (3.5 or later) makes ``start`` return None,
and the caller uses the shell commands.

Requests: ``PUT LF LN LT OFFSET\\n`` then the folder (LF bytes, absolute), the name (LN),
the temporary name (LT), then the bytes as chunks, each ``N\\n`` and N bytes, ended by
``0\\n`` (or ``-1\\n``: the sender gave up; the answer is ``ABORTED``). Answers: ``OK SIZE
SHA256`` or ``ERR CODE MESSAGE``, one line. A sender that vanishes mid-copy leaves what
arrived in the temporary file, to be continued by a later copy.
"""

from __future__ import annotations

import re

from imgq.destinations.base import CHUNK, Found
from imgq.errors import HostUnreachable

# Runs on the host: Python 3.5+ only (no f-strings), standard library only.
RECEIVER = r"""
import hashlib, os, stat, sys
if sys.version_info < (3, 5):
    sys.exit(3)
inp, out = sys.stdin.buffer, sys.stdout.buffer
buf = bytearray(1 << 20)
if sys.platform.startswith("linux") and stat.S_ISFIFO(os.fstat(0).st_mode):
    # sshd hands us the bytes through a pipe: 64 KiB by default, so it stalled each time
    # it had a few of its packets to pass on; 1 MiB (what any user may ask for by
    # default, /proc/sys/fs/pipe-max-size) made copies a third faster here
    try:
        import fcntl
        fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except Exception:
        pass  # a smaller limit: the default pipe, slower, as correct
start_writing = None
if sys.platform.startswith("linux"):
    # sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) after each chunk: the disk starts on
    # what has arrived while more arrives, so the fsync after the last byte finds little
    # left to write (a tenth faster here). It only starts writing: the fsync alone
    # decides what is durable.
    try:
        import ctypes
        start_writing = ctypes.CDLL(None).sync_file_range
        start_writing.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    except Exception:
        start_writing = None

def line():
    l = inp.readline(64)
    if not l.endswith(b"\n"):
        sys.exit(0)  # the sender is gone (or mad): what arrived stays, to be continued
    return l[:-1]

def exact(n):
    b = inp.read(n)
    if len(b) != n:
        sys.exit(0)
    return b

def plain(c):
    return c not in (b"", b".", b"..") and b"/" not in c and b"\0" not in c

def answer(s):
    out.write(s + b"\n")
    out.flush()

def why(e):
    return (e.strerror or str(e)).encode("utf-8", "replace").replace(b"\n", b" ")

answer(b"imgq-receiver 1")
while True:
    head = line().split()
    if len(head) != 5 or head[0] != b"PUT":
        answer(b"ERR 2 bad request")
        sys.exit(2)
    lf, ln, lt, off = (int(x) for x in head[1:])
    folder, name, tmp = exact(lf), exact(ln), exact(lt)
    path = folder + b"/" + tmp
    code, said, fd = 0, b"", -1
    if not (folder.startswith(b"/") and plain(name) and plain(tmp)):
        code, said = 4, b"not a plain name"
    elif off == 0:
        mark = b"." + name + b"."
        try:
            entries = os.listdir(folder)
        except OSError:
            entries = []
        for e in entries:  # killed copies of this name: they go
            if e.startswith(mark) and e.endswith(b".imgq-tmp") and e != tmp:
                try:
                    if not stat.S_ISDIR(os.lstat(folder + b"/" + e).st_mode):
                        os.unlink(folder + b"/" + e)
                except OSError:
                    pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            code, said = 4, why(e)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != off:
                code = 6
        except OSError:
            code = 6
        if code == 6:
            said = b"the part of a killed copy to be continued changed"
    aborted = False
    while True:
        n = int(line())
        if n <= 0:
            aborted = n < 0
            break
        view = memoryview(buf)[:n] if n <= len(buf) else memoryview(bytearray(n))
        got = 0
        while got < n:
            k = inp.readinto(view[got:])
            if not k:
                sys.exit(0)
            got += k
        at = 0
        while code == 0 and at < n:
            try:
                at += os.write(fd, view[at:n])
            except OSError as e:
                code, said = 5, why(e)
        view.release()
        if code == 0 and start_writing is not None:
            start_writing(fd, 0, 0, 2)
    if code == 0 and not aborted:
        try:
            os.fsync(fd)
        except OSError as e:
            code, said = 5, why(e)
    if fd >= 0:
        os.close(fd)
    if aborted:
        answer(b"ABORTED")
        continue
    if code:
        answer(b"ERR %d %s" % (code, said))
        continue
    try:  # what is on disk now, read back from the file
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file any more")
        h, size = hashlib.sha256(), 0
        while True:
            k = os.readv(fd, [buf])
            if not k:
                break
            h.update(memoryview(buf)[:k])
            size += k
        os.close(fd)
        answer(b"OK %d %s" % (size, h.hexdigest().encode()))
    except OSError as e:
        answer(b"ERR 7 " + why(e))
"""

_ANSWER = re.compile(rb"OK (\d+) ([0-9a-f]{64})|ERR (\d+) ?(.*)|ABORTED")
ANSWER_TIMEOUT = 600.0  # seconds for the fsync and read-back of one copy once sent


class Receiver:
    """The client's end of one ``RECEIVER`` on the host (one per connection)."""

    def __init__(self, proc, link):
        self.proc, self.link = proc, link

    @classmethod
    def start(cls, conn, link) -> "Receiver | None":
        """A receiver started over ``conn``; None if the host has no usable python3 (it
        ended without greeting). HostUnreachable if the connection is lost."""
        from imgq import ssh as remote

        proc = remote.start_process(conn, ["python3", "-I", "-c", RECEIVER], io_timeout=60.0)
        try:
            hello = proc.read_line(64)
        except HostUnreachable:
            if proc.channel.eof_received and conn.transport is not None and conn.transport.is_active():
                proc.close()
                return None  # it ended: no python3, or too old for the receiver
            proc.close()
            raise
        if hello != b"imgq-receiver 1":
            proc.close()
            return None
        return cls(proc, link)

    def put(self, folder: str, name: str, tmp: str, offset: int, feed) -> tuple[int, str, Found | None, object]:
        """Send one copy: ``feed(write)`` writes its bytes (and returns what it likes).
        Returns (code, message, what the host read back, what feed returned): code 0 with
        the read-back, or _PUT_SCRIPT's exit codes (4 cannot create, 5 cannot write, 6 the
        part to continue changed). If ``feed`` raises, the host is told to give up and the
        exception goes on; HostUnreachable if the connection or the receiver is lost."""
        proc = self.proc
        enc = [s.encode("utf-8", "surrogateescape") for s in (folder, name, tmp)]
        proc.write(b"PUT %d %d %d %d\n" % (len(enc[0]), len(enc[1]), len(enc[2]), offset) + b"".join(enc))

        def write(data) -> None:
            view = memoryview(data)
            try:
                for at in range(0, len(view), CHUNK):
                    piece = view[at : at + CHUNK]
                    proc.write(b"%d\n" % len(piece))
                    proc.write(piece)
            finally:
                view.release()

        try:
            fed = feed(write)
        except BaseException:
            try:
                proc.write(b"-1\n")
                proc.read_line(64)
            except Exception:
                proc.close()  # out of step: the next copy starts a new receiver
            raise
        proc.write(b"0\n")
        proc.set_timeout(ANSWER_TIMEOUT)
        try:
            said = proc.read_line(4096)
        finally:
            proc.set_timeout(60.0)
        m = _ANSWER.fullmatch(said)
        if m is None or m.group(0) == b"ABORTED":
            proc.close()
            raise HostUnreachable(f"the receiver answered {said[:200]!r}")
        if m.group(1):
            return 0, "", Found(int(m.group(1)), m.group(2).decode()), fed
        return int(m.group(3)), m.group(4).decode(errors="replace"), None, fed

    @property
    def alive(self) -> bool:
        return not self.proc.channel.closed

    def close(self) -> None:
        self.proc.close()
