"""Moving work to the hosts and results back: each host's link to its agent, claiming
jobs on the agents' behalf (``slots + prefetch`` in flight per host, so the next input is
already there when a slot frees up), sending each job with its input read by identity
(a video's streamed in bounded pieces, ``staging``), running the stages of split images
and the joins of split videos on this machine, and checking what comes back before
anything is stored (a video's artifacts and chunk parts as videos: ``videos``).

Results reach the coordinator thread as ``("outcome", host, link, Arrived)`` events on
its queue; nothing here settles a job.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing as mp
import os
import queue as stdqueue
import time
from pathlib import Path

from imgq import store, work
from imgq.config import Settings
from imgq.split.plan import JOIN
from imgq.errors import ImgqError, classify
from imgq.fleet import arrival, link, protocol, staging, videos
from imgq.fleet.hosts import HostEntry
from imgq.fleet.roster import Host, Roster
from imgq.ledger import queue
from imgq.ledger.database import DB

STORE_THREADS = 8  # arrivals checked and stored at once (see Dispatch.__init__)
# Without --prefetch a host gets as many jobs ahead as it has slots, or, when its replies
# come faster, enough to keep its slots busy for PREFETCH_SECONDS (at most PREFETCH_MAX
# times its slots): jobs of a few milliseconds would otherwise run the agent dry while the
# coordinator settles (an fsync round, a few ms).
PREFETCH_SECONDS = 0.025
PREFETCH_MAX = 8


@dataclasses.dataclass
class Arrived:
    """One job's outcome on its way to being settled: where it ran, and whether a failure
    counts against the host (its agent said so), not against this machine or the input."""

    host: Host
    link: link.AgentLink | None  # None: ran here (a stage of a split image)
    outcome: queue.Outcome
    hosts_fault: bool = False

    @property
    def here(self) -> bool:
        """Run on this machine (a stage of a split image), not on the host."""
        return self.link is None


class Dispatch:
    """Claims, sends and receives for the hosts of a ``Roster``."""

    def __init__(self, settings: Settings, opts, db: DB, roster: Roster, events: stdqueue.Queue):
        self.settings, self.opts, self.db, self.roster, self.events = settings, opts, db, roster, events
        self.dry_until = 0.0  # the last claim found nothing: don't ask again before this
        # storing an arrival is mostly waiting for its fsync (the file's: 3-9 ms
        # each here); with two threads that capped a coordinator near 300 jobs/s however
        # many agents it had, and concurrent fsyncs share the file system's journal commits
        self.store_pool = concurrent.futures.ThreadPoolExecutor(max(STORE_THREADS, opts.transfers), thread_name_prefix="imgq-store")
        self.stages = None  # a process pool for stages of split images, which need this store
        self._inboxes: dict[str, str | None] = {}  # inbox -> its path under the shared root + "/" (None: outside)
        self.here: set[int] = set()  # jobs running in that pool (no host may answer for them)
        # by lease token (one attempt; a job sent again is a new one): a video's jobs sent
        # to hosts, with the journal's facts of it, which bound its replies...
        self.videos: dict[str, videos.VideoFacts] = {}
        # ...and attempts whose input changed (or could not be read) here while it was
        # streamed: (message, kind), the outcome whatever the agent answers
        self.changed: dict[str, tuple[str, str]] = {}

    def _arrived(self, h: Host, lk, outcome: queue.Outcome, hosts_fault: bool) -> None:
        self.events.put(("outcome", h, lk, Arrived(h, lk, outcome, hosts_fault)))

    def connect(self, h: Host, entry: HostEntry) -> link.AgentLink:
        """In a connect thread: SSH, ``imgq agent``, its hello and preflight; the link,
        its callbacks bound to this dispatch (lost links are reported as events)."""
        opts = self.opts
        conn, proc, hello = link.start_agent(
            entry, ssh_config=opts.ssh_config, accept_new_host_keys=opts.accept_new_host_keys,
            connect_timeout=opts.connect_timeout, slots=entry.spec.slots or opts.slots,
            shared_root=str(opts.shared_root) if opts.shared_root else None,
            shared_store=str(self.settings.store_dir.absolute()) if opts.shared_store else None,
        )
        return self.make_link(h, entry.name, link.SshTransport(conn, proc), hello)

    def make_link(self, h: Host, name: str, transport, hello: dict) -> link.AgentLink:
        """An ``AgentLink`` over ``transport`` (SSH, or a connect-back agent's TLS
        connection), its callbacks bound to this dispatch (lost links become events)."""
        opts = self.opts
        return link.AgentLink(
            name, transport, hello, host_timeout=opts.host_timeout, transfers=opts.transfers,
            on_message=lambda lk, hd, blob: self.on_message(h, lk, hd, blob),
            on_lost=lambda lk, reason, misbehaved: self.events.put(("lost", h, lk, reason, misbehaved)),
            read_input=lambda lk, claim, header, path: self.read_input(h, lk, claim, header, path),
            reply_limit=lambda hd, size: self.reply_limit(h, hd, size), spill_dir=self.settings.store_dir,
            shares_store=self.shares_store(hello),
        )

    # --- claiming and sending -----------------------------------------------------------

    def claim(self, *, stopping: bool) -> None:
        """Fill every host up to ``slots + prefetch`` jobs in flight: one claim (one
        transaction) for all of them, the least loaded first in the deal."""
        if stopping or time.time() < self.dry_until:
            return
        wants = []
        for h in sorted(self.roster.up(), key=lambda h: self.roster.busy(h) / max(1, h.link.slots)):
            if h.draining:
                continue
            prefetch = self.prefetch(h)
            # a job answered but not settled yet holds no slot on the agent: its
            # replacement goes out now, while the coordinator stores and settles the reply
            want = h.link.slots + prefetch - self.roster.busy(h)
            # a deep prefetch is topped up in batches (one claim for several jobs), never
            # below its slots' worth of jobs queued
            if want > 0 and want >= (prefetch - h.link.slots) // 2:
                wants.append((h, want))
        if not wants:
            return
        lists = queue.claim_many(self.db, [(h.actor().name, h.actor(), want) for h, want in wants], lease_seconds=self.settings.lease_seconds,
                                 max_attempts=self.opts.max_attempts, max_lost=self.settings.max_lost)
        videos_ = self._videos([c for claims in lists for c in claims])
        for (h, _), claims in zip(wants, lists):
            for c in claims:
                h.inflight[c.job_id] = c
                if c.stage and c.kind != "video":
                    self._run_here(h, c)
                else:
                    if c.kind == "video":
                        row = videos_.get(c.file_id) or {}
                        self.videos[c.token] = videos.VideoFacts(c.size, row.get("duration"), row.get("frame_rate"))
                    self._send(h, c)
        if sum(map(len, lists)) < sum(w for _, w in wants):
            self.dry_until = time.time() + self.opts.poll

    def prefetch(self, h: Host) -> int:
        """Jobs sent to ``h`` ahead of its free slots: ``--prefetch``, else its slots, or
        as many as it finishes in PREFETCH_SECONDS when its replies come faster (tiny
        jobs), up to PREFETCH_MAX times its slots."""
        if self.opts.prefetch is not None:
            return self.opts.prefetch
        slots = h.link.slots
        if h.reply_gap <= 0:
            return slots
        return max(slots, min(PREFETCH_MAX * slots, math.ceil(PREFETCH_SECONDS / h.reply_gap)))

    def _videos(self, claims: list[queue.Claim]) -> dict:
        """The running time and frame rate of the claimed videos (a video's input is
        streamed, and its replies checked as ``videos`` says, within limits from them);
        one query for the batch, none when it has no video (the claim itself carries every
        file's kind, sha256 and size)."""
        ids = sorted({c.file_id for c in claims if c.kind == "video"})
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r["id"]: dict(r) for r in self.db.all(f"SELECT id, duration, frame_rate FROM files WHERE id IN ({marks})", ids)}

    def _run_here(self, h: Host, c: queue.Claim) -> None:
        """A stripe or join of a split image (imgq enqueue --split) reads and writes
        intermediate stripes in this machine's store, so they run here, in a pool of local
        processes (one per core, so stripes still run in parallel), counted in flight on
        the host that claimed it. (A split video's chunks and join run on the hosts: the
        parts come back like artifacts, and go out with the join's input.)"""
        self.here.add(c.job_id)
        if self.stages is None:
            # spawn, not fork: this process has threads (paramiko's, ours)
            self.stages = concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1, mp_context=mp.get_context("spawn"))
        fut = self.stages.submit(work.process, c, self.settings)

        def done(f, c=c):
            try:
                outcome = f.result()
                outcome.claim = c  # a copy came back from the other process: ours is in flight
            except Exception as e:
                outcome = queue.Outcome(c, error=f"{Path(c.inbox) / c.path}: {type(e).__name__}: {e}", kind="transient")
            self.here.discard(c.job_id)
            self._arrived(h, None, outcome, False)

        fut.add_done_callback(done)

    def _send(self, h: Host, c: queue.Claim) -> None:
        """Queue a job for the host; its header carries the sha256 and size the journal
        recorded for the input (the claim's), which the bytes sent (or, with
        --shared-root, the bytes the agent opens) must have. To an agent that writes
        into this store (``shares_store``) it also names the file and the lease token,
        from which the agent's slot makes the same staged names a local worker would."""
        header = {"type": "job", "job": c.job_id, "spec": c.spec, "spec_hash": c.spec_hash,
                  "max_pixels": self.settings.max_pixels, "quality": self.settings.jpeg_quality,
                  "sha256": c.sha256, "size": c.size}
        if c.token in self.videos:
            header["kind"] = "video"
            if c.stage:
                header["stage"] = c.stage  # a chunk of a split video, or their join
        elif h.link.shares_store and not c.stage:
            # a photo's artifacts, written by the agent into this store (videos and their
            # parts still come over the connection, checked as videos)
            header["store"] = {"file": c.file_id, "token": c.token}
        # a path only to an agent started with a shared root (a connect-back agent's
        # launcher may not have given it one: it gets the bytes, as without --shared-root)
        rel = self._under_shared_root(c) if h.link.hello.get("shared_root") else None
        if rel is not None:
            header["path"] = rel
        # a join's chunks go with it even when its original is read in place
        needs_bytes = rel is None or c.stage.startswith(f"{JOIN}:")
        h.link.send_job(c, header, Path(c.inbox) / c.path if needs_bytes else None)

    def shares_store(self, hello: dict) -> bool:
        """Whether an agent writes its artifacts into this store itself (``imgq work
        --shared-store``): it must have been started with ``--shared-store`` and have
        found there the marker of this database's store (``store.own``), so it is this
        store, not a copy or another database's."""
        return bool(self.opts.shared_store) and bool(hello.get("shared_store")) and hello.get("store_id") == self.db.id

    def _under_shared_root(self, c: queue.Claim) -> str | None:
        """The input's path relative to --shared-root, or None: then its bytes are sent.
        Only the inbox root is resolved (it may be a link to a share, as for
        ``Original``; once per inbox and run); the path below it is sent as recorded,
        and the agent opens it without following a symlink."""
        if self.opts.shared_root is None:
            return None
        if c.inbox not in self._inboxes:
            root, inbox = os.path.realpath(self.opts.shared_root), os.path.realpath(c.inbox)
            if os.path.commonpath([inbox, root]) != root:
                self._inboxes[c.inbox] = None
            else:
                rel = os.path.relpath(inbox, root)
                self._inboxes[c.inbox] = "" if rel == "." else rel + "/"
        prefix = self._inboxes[c.inbox]
        return None if prefix is None else prefix + c.path

    def read_input(self, h: Host, lk: link.AgentLink, c: queue.Claim, header: dict, path: Path):
        """In a sender thread: the input's bytes, read by identity (no symlink followed,
        a regular file) and sent only if their sha256 and size are the journal's; else
        None, with the outcome a local worker would report (changed in the inbox, a
        symlink or FIFO swapped in: permanent, naming the file; an I/O error: transient).
        A video's input is a ``protocol.Blob`` streamed from the opened file, checked as
        it goes (``_video_input``)."""
        from imgq import original

        try:
            if header.get("kind") == "video":  # streamed from the open handle, hashed as it goes
                return self._video_input(c, header)
            with original.open_original(c.inbox, c.path) as o:
                return o.read_verified(header["sha256"], header["size"])
        except ImgqError as e:
            text = str(e) if str(path) in str(e) else f"{path}: {e}"
            outcome = queue.Outcome(c, error=text, kind=classify(e))
        except OSError as e:
            outcome = queue.Outcome(c, error=f"{path}: {e.strerror or e}", kind="transient")
        self._arrived(h, lk, outcome, False)
        return None

    def _video_input(self, c: queue.Claim, header: dict) -> protocol.Blob:
        """A video's input, streamed (``staging.StreamedOriginal``); for a join, its
        original (unless read in place under the shared root) and then every chunk's parts
        from the store, listed in the header with their sha256 (``staging.join_parts``)."""
        from imgq import original

        blobs: list[protocol.Blob] = []
        try:
            if "path" not in header:
                o = original.open_original(c.inbox, c.path)
                try:
                    blobs.append(staging.StreamedOriginal(o, header["sha256"], header["size"], lambda text, kind, c=c: self.changed.__setitem__(c.token, (text, kind))))
                except BaseException:
                    o.close()
                    raise
            if c.stage.startswith(f"{JOIN}:"):
                header["parts"], files = staging.join_parts(self.settings.store_dir, c, videos.movies(c.spec))
                blobs.append(protocol.FilesBlob(files))
        except BaseException:
            for b in blobs:
                b.close()
            raise
        return blobs[0] if len(blobs) == 1 else protocol.ChainedBlob(blobs)

    # --- what comes back ----------------------------------------------------------------

    def _held(self, h: Host, header: dict) -> queue.Claim:
        """The claim a reply is about; BadReply unless it is a job sent to this host and
        not yet answered (a reply for any other job, or a second one, breaks the protocol)."""
        job = header.get("job")
        c = h.inflight.get(job) if type(job) is int else None
        if c is None or job in self.here or h.answered.get(job) is c:
            raise arrival.BadReply(f"a {header['type']!r} reply for job {str(job)[:40]}, which was not sent to this host or was answered already")
        return c

    def reply_limit(self, h: Host, header: dict, blob_size: int) -> int:
        """In the reader thread, before a reply's blob is read: how big it may be. A
        ``done`` is checked against the job's recipe now (BadReply), so a wrong reply
        costs no read; an ``error`` carries no blob."""
        c = self._held(h, header)
        if header["type"] != "done":
            return 0
        if header.get("stored") is not None:
            if header["stored"] is not True or h.link is None or not h.link.shares_store or c.token in self.videos or c.stage:
                raise arrival.BadReply(f"job {c.job_id}: the reply says its artifacts are in the shared store, which this agent was not asked to write")
            return 0  # checked in on_message: nothing follows the header
        video = self.videos.get(c.token)
        cap = arrival.reply_limit(c.spec, self.settings.max_pixels, video)
        if blob_size <= cap:  # (over it, the frame is refused as too big before anything else)
            if "parts" in header or c.stage.startswith("stripe:"):
                arrival.check_parts(c, header, blob_size, max_pixels=self.settings.max_pixels, video=video)
            else:
                arrival.check_reply(c, header, blob_size, max_pixels=self.settings.max_pixels, video=video)
        return cap

    def on_message(self, h: Host, lk: link.AgentLink, header: dict, blob: protocol.Blob) -> None:
        """In the link's reader thread (BadReply: the link is lost and the host benched)."""
        if header["type"] not in ("done", "error"):
            blob.close()
            return  # a message type of a newer agent: ignored
        c = self._held(h, header)
        if len(h.answered) > 2 * len(h.inflight) + 64:  # forget replies to jobs settled since
            h.answered = {j: x for j, x in h.answered.items() if h.inflight.get(j) is x}
        h.answered[c.job_id] = c
        self.events.put(("answered", h, lk, c.job_id))  # its slot is free: the loop sends the next job before settling this one
        changed = self.changed.pop(c.token, None)
        if changed is not None:  # what we sent was not the journal's bytes: not the host's doing
            blob.close()
            self.videos.pop(c.token, None)
            self._arrived(h, lk, queue.Outcome(c, error=changed[0], kind=changed[1]), False)
            return
        if header["type"] == "done" and header.get("stored"):
            blob.close()
            self._accept_stored(h, lk, c, header)
            return
        if header["type"] == "done":
            self.store_pool.submit(self._store, h, lk, c, header, blob)
            return
        self.videos.pop(c.token, None)
        message, kind, staged = header.get("message"), header.get("kind"), header.get("input")
        if not isinstance(message, str) or kind not in ("permanent", "transient") or not isinstance(staged, (str, type(None))):
            raise arrival.BadReply(f"job {c.job_id}: an error reply needs a message and a kind of permanent or transient")
        src = str(Path(c.inbox) / c.path)
        text = message[:4000] or "failed on the host"
        if staged and staged in text:
            text = text.replace(staged, src)
        elif src not in text:
            text = f"{src}: {text}"  # always name the file, once
        self._arrived(h, lk, queue.Outcome(c, error=f"{text} (on {h.name})" if kind == "transient" else text, kind=kind), True)

    def _accept_stored(self, h: Host, lk: link.AgentLink, c: queue.Claim, header: dict) -> None:
        """In the reader thread: a reply whose artifacts the agent wrote into the shared
        store (``arrival.accept_stored``: a few kB read and hashed, no decode, no write
        here). A file missing, of another size or sha256 fails the attempt (transient,
        counted against the host, its files removed): the job retries, and a host that
        keeps doing it is benched. A header that breaks the protocol raises BadReply."""
        try:
            artifacts = arrival.accept_stored(c, header, self.settings.store_dir, max_pixels=self.settings.max_pixels)
        except arrival.ArtifactRejected as e:
            store.discard(self.settings.store_dir, arrival.staged_names(c))
            self._arrived(h, lk, queue.Outcome(c, error=f"{Path(c.inbox) / c.path}: {e} (on {h.name})", kind="transient"), True)
            return
        # the agent's slot fsynced each file before it replied: durable
        self._arrived(h, lk, queue.Outcome(c, artifacts=artifacts, result=header.get("result"), durable=True), True)

    def _store(self, h: Host, lk: link.AgentLink, c: queue.Claim, header: dict, blob: protocol.Blob) -> None:
        hosts_fault = True
        try:
            artifacts, parts = arrival.receive_all(c, header, blob, self.settings.store_dir, max_pixels=self.settings.max_pixels,
                                                   video=self.videos.pop(c.token, None))
            # receive fsyncs each file before its rename to the staged name: durable
            outcome = queue.Outcome(c, artifacts=artifacts, result=header.get("result"), parts=parts, durable=True)
        except (arrival.BadReply, arrival.ArtifactRejected) as e:
            # the host sent something it should not have: bench it, its jobs run elsewhere
            self.events.put(("bad", h, lk, f"bad reply: {e} ({Path(c.inbox) / c.path})"))
            return
        except OSError as e:  # our own store (full disk, I/O error): not the host's doing
            outcome = queue.Outcome(c, error=f"cannot write artifacts of {Path(c.inbox) / c.path} to the store: {e.strerror or e}", kind="transient")
            hosts_fault = False
        except Exception as e:  # a bug of ours: retried, and counted against no host
            outcome = queue.Outcome(c, error=f"{Path(c.inbox) / c.path}: internal error storing the reply from {h.name}: {type(e).__name__}: {e}", kind="transient")
            hosts_fault = False
        finally:
            blob.close()
        self._arrived(h, lk, outcome, hosts_fault)

    def forget(self, claims) -> None:
        """Attempts that are over without a reply (their host was lost): drop what was
        kept to check their replies."""
        for c in claims:
            self.videos.pop(c.token, None)
            self.changed.pop(c.token, None)

    def close(self) -> None:
        self.store_pool.shutdown(wait=False, cancel_futures=True)
        if self.stages is not None:
            self.stages.shutdown(wait=True, cancel_futures=True)
