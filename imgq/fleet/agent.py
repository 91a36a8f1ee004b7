"""``imgq agent``: the remote side of ``imgq work --hosts``.

One agent runs on a host per coordinator, started over SSH with its stdin and stdout as
the channel (``imgq.protocol``). It runs N slots (worker processes, default: the host's
cores), each rendering jobs with exactly the code a local worker runs
(``imgq.work.process``), so a remote artifact is byte for byte the local one.

What it promises:
- Everything it writes is inside its own session folder (``<workdir>/s-<pid>-<random>``,
  mode 700), under names made from job ids (``in/<job>``, ``out/job<job>/...``), never
  from a user's file name: the coordinator does not even send those. In shared-root mode
  it reads inputs under the shared root only, opened the way the coordinator opens an
  original (``imgq.original``: no symlink followed below the root, a regular file) and
  used only if their sha256 and size are the ones the job header carries (the journal's);
  the verified bytes are what its slot renders.
- A job frame may carry exactly the input's recorded size (plus a video join's parts,
  ``imgq.fleet.stages``); its bytes are streamed to ``in/<job>`` as they arrive, never
  held whole in memory, and checked against the header's sha256 before a slot sees them. A video under the shared root is not copied:
  the slot opens it in place by identity and checks its sha256 as a stream. Replies
  (a video's preview, a chunk's parts) are streamed from the session folder in pieces.
- It says hello first (version, cores, free disk, whether Pillow and OpenCV import), then
  a heartbeat every second, so the coordinator notices a dead or frozen host within
  seconds.
- It exits when its stdin closes (the coordinator went away, or closed the session), or
  when the coordinator has been silent for ``idle_timeout`` seconds; its slots die with
  it (PR_SET_PDEATHSIG), and its session folder is removed.
- Started with ``--connect`` (``main_connect``), it dials the coordinator instead and
  speaks the same frames over that TLS connection (``imgq.fleet.listen``); the
  connection closing is its stdin closing: it exits, busy or not.

What runs in a slot process is ``imgq.fleet.slot``.
"""

from __future__ import annotations

import concurrent.futures
import errno
import multiprocessing as mp
import os
import queue as stdqueue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from imgq import __version__
from imgq.errors import Exit
from imgq.fleet import agent_host as host, protocol, slot, slurm, stages

BEAT_SECONDS = 1.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_WORKDIR = "~/.imgq/agent"
_SPEC_HASH = re.compile(r"[0-9a-f]{8,64}$")
_TOKEN = re.compile(r"[0-9a-f]{8,64}$")


class Agent:
    def __init__(self, *, slots: int | None, workdir: str, shared_root: str | None, idle_timeout: float, stdin, stdout, channel_fd: int | None = None,
                 shared_store: str | None = None):
        self.stdin, self.stdout, self.channel_fd = stdin, stdout, channel_fd
        # inside a Slurm job, the CPUs Slurm gave it (the node's other cores are others')
        self.cores = slurm.cpus_from_env() or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        self.slots = slots or self.cores
        self.idle_timeout = idle_timeout
        self.shared_root = os.path.realpath(os.path.expanduser(shared_root)) if shared_root else None
        # the coordinator's store, seen here at the same path (--shared-store): slots
        # write artifacts there under their staged names when a job says so
        self.shared_store = os.path.realpath(os.path.expanduser(shared_store)) if shared_store else None
        root = Path(os.path.expanduser(workdir))
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        host.sweep_sessions(root)
        self.session = root / f"s-{os.getpid()}-{secrets.token_hex(4)}"
        self.session.mkdir(mode=0o700)
        (self.session / "in").mkdir()
        (self.session / "out").mkdir()
        self.write_lock = threading.Lock()
        self.jobs: dict[int, concurrent.futures.Future] = {}
        self.jobs_lock = threading.Lock()
        self.finished: stdqueue.Queue = stdqueue.Queue()
        self.heard = time.monotonic()
        self.stopping = threading.Event()
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.sync_pool = concurrent.futures.ThreadPoolExecutor(max(2, self.slots), thread_name_prefix="imgq-agent-sync")
        self.broken: str | None = None  # why this agent cannot render (a library missing)

    # --- output ------------------------------------------------------------------------

    def send(self, header: dict, blob: bytes | memoryview = b"") -> None:
        try:
            with self.write_lock:
                protocol.write_message(self.stdout, header, blob)
        except (OSError, ValueError):
            self.quit()  # the coordinator is gone: nobody to work for

    def free_disk(self) -> int:
        try:
            return shutil.disk_usage(self.session).free
        except OSError:
            return 0

    def hello(self) -> None:
        libs, errors = host.libraries()
        if errors:
            self.broken = "; ".join(f"{k}: {v}" for k, v in errors.items())
        self.send({
            "type": "hello", "protocol": protocol.PROTOCOL, "version": __version__,
            "python": sys.version.split()[0], "cores": self.cores, "slots": self.slots,
            "free_disk": self.free_disk(), "libs": libs, "errors": errors,
            "pid": os.getpid(), "workdir": str(self.session), "shared_root": self.shared_root,
            "shared_store": self.shared_store, "store_id": host.store_id(self.shared_store),
        })

    # --- slots -------------------------------------------------------------------------

    def start_pool(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(self.slots, mp_context=mp.get_context("fork"), initializer=slot.slot_init, initargs=(self.channel_fd,))
        # start every slot now, before the heartbeat thread exists, rather than on demand
        for f in [self.pool.submit(time.sleep, 0) for _ in range(self.slots)]:
            f.result()

    def _pool_broken(self) -> None:
        """A slot died (killed, out of memory): its jobs fail transiently; fresh slots."""
        old, self.pool = self.pool, None
        old.shutdown(wait=False, cancel_futures=True)
        self.start_pool()

    # --- jobs --------------------------------------------------------------------------

    def job_limit(self, header: dict, blob_size: int) -> int:
        """How many bytes a message from the coordinator may carry: a staged job, its
        input's recorded size exactly (nothing if it is read in place under the shared
        root), plus the parts a video's join lists; anything else, nothing."""
        if header["type"] != "job":
            return 0
        extra = stages.parts_size(header)
        if "path" in header:
            expected = extra
        else:
            size = header.get("size")
            if type(size) is not int or size < 0:
                raise protocol.ProtocolError(f"job {header.get('job')!r}: no input size in the job header")
            expected = size + extra
        if blob_size != expected:
            raise protocol.ProtocolError(f"job {header.get('job')!r}: {blob_size} input bytes sent, {expected} stated")
        return expected

    def on_job(self, header: dict, blob: protocol.Blob) -> None:
        job_id = header.get("job")
        if not isinstance(job_id, int) or job_id < 0:
            blob.close()
            self.send({"type": "fatal", "message": f"bad job id {job_id!r}"})
            return
        try:
            try:
                spec, spec_hash = header["spec"], str(header["spec_hash"])
                if not _SPEC_HASH.match(spec_hash):
                    raise ValueError(f"bad spec hash {spec_hash!r}")
                stages.check_stage(header)
                from imgq import recipes

                recipes.normalize_recipe(spec)  # artifact names become file names: checked first
                src_root, src_rel = self._input(job_id, header, blob)
            finally:
                blob.close()  # a staged input not moved to in/<job> (refused) is removed
        except OSError as e:  # the host's disk (full, read-only) or its view of the shared root
            self._refuse(job_id, "transient", f"input not available on the host: {e.strerror or e}")
            return
        except (ValueError, KeyError, TypeError) as e:
            self._refuse(job_id, "permanent", f"bad job message: {e}")
            return
        except Exception as e:  # UnknownOperation from the recipe check, ...
            from imgq.errors import classify

            self._refuse(job_id, classify(e), str(e))
            return
        if self.broken:
            self._refuse(job_id, "transient", f"host cannot render: {self.broken}")
            return
        stage = header.get("stage") or ""
        in_place = src_root != str(self.session / "in")  # read where it is: checked by the slot as a stream
        out_dir, stored = str(self.session / "out"), None
        if header.get("store") is not None:
            try:
                stored = self._store_names(header["store"], stage)
            except ValueError as e:
                self._refuse(job_id, "permanent", f"bad job message: {e}")
                return
            out_dir = self.shared_store
        args = (job_id, spec, spec_hash, int(header["max_pixels"]), int(header["quality"]), src_root, src_rel, out_dir,
                stage, header["sha256"] if in_place else None, header["size"] if in_place else None, stored)
        try:
            fut = self.pool.submit(slot.slot_job, *args)
        except concurrent.futures.BrokenExecutor:
            self._pool_broken()
            fut = self.pool.submit(slot.slot_job, *args)
        with self.jobs_lock:
            self.jobs[job_id] = fut
        fut.add_done_callback(lambda f, j=job_id: self.finished.put((j, f)))

    def _store_names(self, given, stage: str = "") -> tuple[str, str]:
        """(file id, lease token) of a job to be written into the shared store, checked:
        they become the staged names, so no folder separator, no hidden or relative
        name, a token of hex digits; a photo's whole job only (no stage)."""
        if not self.shared_store:
            raise ValueError("the job asks for the shared store, but this agent was started without --shared-store")
        if stage:
            raise ValueError(f"a {stage} job cannot be written into the shared store")
        file_id, token = (given.get("file"), given.get("token")) if isinstance(given, dict) else (None, None)
        if not isinstance(file_id, str) or not file_id or "/" in file_id or "\0" in file_id or file_id.startswith("."):
            raise ValueError(f"bad file id {str(file_id)[:80]!r} for the shared store")
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise ValueError(f"bad lease token {str(token)[:40]!r} for the shared store")
        return file_id, token

    def _refuse(self, job_id: int, kind: str, message: str) -> None:
        self.send({"type": "error", "job": job_id, "kind": kind, "message": message})
        self._cleanup(job_id)

    def _input(self, job_id: int, header: dict, blob: protocol.Blob) -> tuple[str, str]:
        """(root, relative path) of the job's input, always ``in/<job>`` in the session:
        the staged bytes, or the bytes of the file under the shared root, opened by
        identity; either way checked against the header's sha256 and size."""
        sha256, size, path = header.get("sha256"), header.get("size"), header.get("path")
        if not isinstance(sha256, str) or type(size) is not int:
            raise ValueError("the job header has no sha256 and size of its input")
        dest = self.session / "in" / str(job_id)
        if header.get("parts"):  # a video's join: its chunks follow the input, into out/job<job>/parts
            stages.take_parts(self.session, job_id, header, blob, 0 if path is not None else size)
        # not store.write_atomically: in/<job> is this agent's private scratch input, read
        # only by this job after it is written and removed with the session
        if path is None:
            if isinstance(blob, protocol.FileBlob):
                os.replace(blob.path, dest)
                if blob.size != size:
                    os.truncate(dest, size)  # the parts after it are in their own files now
            else:
                dest.write_bytes(bytes(blob))
            if protocol.sha256_of(protocol.FileBlob(dest, size)) != sha256:
                raise OSError(errno.EIO, f"the input of job {job_id} arrived damaged (sha256 differs from the header's)")
            return str(self.session / "in"), str(job_id)
        if not self.shared_root:
            raise ValueError("a path was sent but this agent has no shared root")
        from imgq import original

        try:
            if header.get("kind") == "video":
                # read in place, never copied nor held: the slot opens it by identity and
                # checks its sha256 as a stream before decoding (job.process)
                original.Original(self.shared_root, str(path)).close()
                return self.shared_root, str(path)
            with original.Original(self.shared_root, str(path)) as o:
                data = o.read_verified(sha256, size)
        except FileNotFoundError:
            # the coordinator has it: this host does not see the same files (not mounted?)
            raise FileNotFoundError(errno.ENOENT, f"{os.path.join(self.shared_root, str(path))} is not under the shared root {self.shared_root} on this host (is it mounted at the same path?)") from None
        dest.write_bytes(data)
        return str(self.session / "in"), str(job_id)

    def _cleanup(self, job_id: int) -> None:
        try:
            (self.session / "in" / str(job_id)).unlink()
        except FileNotFoundError:
            pass
        shutil.rmtree(self.session / "out" / f"job{job_id}", ignore_errors=True)

    def reply_loop(self) -> None:
        """Send each finished job's artifacts (or its error), then forget its files."""
        while True:
            job_id, fut = self.finished.get()
            if job_id is None:
                return
            with self.jobs_lock:
                self.jobs.pop(job_id, None)
            try:
                if fut.cancelled():
                    self.send({"type": "error", "job": job_id, "kind": "transient", "message": "cancelled"})
                    continue
                exc = fut.exception()
                if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                    self.send({"type": "error", "job": job_id, "kind": "transient", "message": "a worker slot on the host died (killed or out of memory)"})
                    continue
                if exc is not None:
                    self.send({"type": "error", "job": job_id, "kind": "transient", "message": f"internal error {type(exc).__name__}: {exc}"})
                    continue
                r = fut.result()
                if r.get("stored") and r["error"] is None:
                    # fsynced in a thread of its own: the slot renders the next job meanwhile
                    # (an fsync can take longer than a small job's rendering)
                    self.sync_pool.submit(self._reply_stored, job_id, r)
                    continue
                try:
                    self._reply(job_id, r)
                except Exception as e:  # a bug of ours must cost this job a retry, not every later reply
                    self.send({"type": "error", "job": job_id, "kind": "transient", "message": f"internal error replying: {type(e).__name__}: {e}"})
            finally:
                self._cleanup(job_id)

    def _reply_stored(self, job_id: int, r: dict) -> None:
        """A job written into the shared store: its files made durable, then its header
        sent (only what is on disk for good is reported there); a file that cannot be
        synced fails the job (transient), its files removed."""
        from imgq import store

        try:
            staged = [a["staged"] for a in r["artifacts"] if a.get("staged")]
            failed = store.sync_files(Path(self.shared_store), staged)
            if failed:
                store.discard(Path(self.shared_store), staged)
                name, e = next(iter(failed.items()))
                self.send({"type": "error", "job": job_id, "kind": "transient", "message": f"cannot write {Path(self.shared_store) / name}: {e.strerror or e}"})
                return
            self._reply(job_id, r)
        except Exception as e:
            self.send({"type": "error", "job": job_id, "kind": "transient", "message": f"internal error replying: {type(e).__name__}: {e}"})

    def _reply(self, job_id: int, r: dict) -> None:
        """A job's ``done`` (its artifacts, or a chunk's parts, streamed from the session
        folder: a video is never read whole into memory) or its ``error``."""
        if r["error"] is not None:
            self.send({"type": "error", "job": job_id, "kind": r["kind"], "message": r["error"], "input": str(self.session / "in" / str(job_id))})
            return
        if r.get("stored"):  # written and checked in the shared store by the slot, fsynced here: only the header goes
            out = [{k: a[k] for k in ("name", "sha256", "bytes", "width", "height")} for a in r["artifacts"]]
            self.send({"type": "done", "job": job_id, "artifacts": out, "result": r["result"], "stored": True})
            return
        out, files = [], []
        for a in r["artifacts"]:
            # where the slot wrote it: a per-attempt name when the worker stages its outputs
            path = self.session / "out" / (a.get("staged") or a["path"])
            if slot.file_digest(path) != (a["bytes"], a["sha256"]):
                self.send({"type": "error", "job": job_id, "kind": "transient", "message": f"artifact {a['name']} changed on the host's disk after it was written"})
                return
            out.append({k: a[k] for k in ("name", "sha256", "bytes", "width", "height", "ext") if k in a})
            files.append((path, a["bytes"]))
        header = {"type": "done", "job": job_id, "artifacts": out, "result": r["result"]}
        if r.get("parts"):
            header["parts"] = []
            for p in r["parts"]:
                path = self.session / "out" / p["staged"]
                size, digest = slot.file_digest(path)
                header["parts"].append({"name": p["name"], "sha256": digest, "bytes": size})
                files.append((path, size))
        self.send(header, protocol.FilesBlob(files) if files else b"")

    # --- liveness ----------------------------------------------------------------------

    def beat_loop(self) -> None:
        while not self.stopping.wait(BEAT_SECONDS):
            if time.monotonic() - self.heard > self.idle_timeout:
                sys.stderr.write(f"imgq agent: nothing from the coordinator for {self.idle_timeout:g} s; exiting\n")
                self.quit()
            with self.jobs_lock:
                running = [j for j, f in self.jobs.items() if f.running()]
                waiting = [j for j, f in self.jobs.items() if not f.done() and not f.running()]
            self.send({"type": "beat", "running": running, "waiting": waiting, "free_disk": self.free_disk()})

    def quit(self, code: int = 0) -> None:
        """Stop now: slots killed, session folder removed, process gone."""
        self.stopping.set()
        if self.pool is not None:
            for p in list(getattr(self.pool, "_processes", {}).values()):
                try:
                    p.kill()
                except Exception:
                    pass
        shutil.rmtree(self.session, ignore_errors=True)
        os._exit(code)

    def _read(self, n: int) -> bytes:
        data = self.stdin.read(n)
        self.heard = time.monotonic()  # a big input arriving slowly is not silence
        return data

    def serve(self) -> int:
        self.hello()
        self.start_pool()
        threading.Thread(target=self.reply_loop, daemon=True, name="replies").start()
        threading.Thread(target=self.beat_loop, daemon=True, name="beats").start()
        while True:
            try:
                msg = protocol.read_message(self._read, limit=self.job_limit, spill_dir=self.session / "in", spill_over=0,
                                            spill_name=lambda: f".staged-{secrets.token_hex(6)}")
            except (protocol.ProtocolError, OSError) as e:
                sys.stderr.write(f"imgq agent: {e}\n")
                self.quit(1)
            if msg is None:
                self.quit(0)  # stdin closed: the coordinator is done with us (or dead)
            self.heard = time.monotonic()
            header, blob = msg
            kind = header["type"]
            if kind == "job":
                self.on_job(header, blob)
            elif kind == "cancel":
                with self.jobs_lock:
                    fut = self.jobs.get(header.get("job"))
                if fut is not None:
                    fut.cancel()
            # 'ping' only refreshes `heard`; unknown types are ignored (a newer coordinator)


def main(*, slots: int | None = None, workdir: str = DEFAULT_WORKDIR, shared_root: str | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
         shared_store: str | None = None) -> int:
    """Serve the protocol on this process's stdin/stdout until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    host.grow_pipe(0)
    # Nothing but frames may reach the real stdout: stray prints go to stderr instead.
    sys.stdout = sys.stderr
    agent = Agent(slots=slots, workdir=workdir, shared_root=shared_root, idle_timeout=idle_timeout, stdin=stdin, stdout=stdout, shared_store=shared_store)
    signal.signal(signal.SIGTERM, lambda *_: agent.quit(int(Exit.TERMINATED)))
    signal.signal(signal.SIGINT, lambda *_: agent.quit(int(Exit.INTERRUPTED)))
    return agent.serve()


def main_connect(creds, *, name: str, slots: int | None = None, workdir: str = DEFAULT_WORKDIR, shared_root: str | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, shared_store: str | None = None) -> int:
    """Dial the coordinator (``imgq.fleet.listen.dial``: the pinned certificate, the
    secret's proof) and serve the protocol over that connection until it closes. Exit
    status 1 with a message if the coordinator cannot be reached or is not the pinned one."""
    from imgq.errors import HostUnreachable
    from imgq.fleet import listen

    try:
        stream = listen.dial(creds.connect, creds, name=name)
    except (HostUnreachable, listen.AgentRefused) as e:
        sys.stderr.write(f"imgq agent: {e}\n")
        return 1
    io = listen.StreamIO(stream)
    agent = Agent(slots=slots, workdir=workdir, shared_root=shared_root, idle_timeout=idle_timeout, stdin=io, stdout=io,
                  channel_fd=stream.sock.fileno(), shared_store=shared_store)
    signal.signal(signal.SIGTERM, lambda *_: agent.quit(int(Exit.TERMINATED)))
    signal.signal(signal.SIGINT, lambda *_: agent.quit(int(Exit.INTERRUPTED)))
    return agent.serve()
