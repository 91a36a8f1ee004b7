"""A misbehaving ``imgq agent`` for tests/test_fleet_replies.py.

A real program, started by the coordinator over a real SSH session exactly as ``imgq
agent`` is (the hosts file names it as the host's imgq command): ``python fake_agent.py
MODE agent --slots N ...``. It speaks the frame protocol like the real agent (hello, a
beat every second), renders each job with the real worker code, and then answers in the
way MODE says is wrong:

  bad_json     a frame whose header is not JSON
  wrong_name   an artifact the recipe does not make, instead of one it does
  duplicate    one artifact listed (and sent) twice
  missing      one artifact left out
  empty        no artifact at all, no bytes
  sizes        artifact sizes that do not add up to the bytes sent
  big_field    an artifact whose stated size is more than its chain can make
  big_frame    a frame declaring 3 GiB, then zeros as fast as the channel takes them
  wrong_pixels an artifact whose width and height are larger than its chain allows
  not_jpeg     bytes that hash as stated but are not a JPEG
  truncated    half a frame, then exit
  hang         half a frame, then silence (the process stays alive)
  twice        the right reply, sent twice

Only the first job gets the bad reply; the process then waits to be cut off.

Started with ``--shared-store PATH`` (``imgq work --shared-store``), it says so in its
hello like the real agent, and two more modes write every job's artifacts into that
store with the real worker code and reply with their header only (``stored``), right,
except the first job's:

  stored_missing   one artifact's file removed before the reply
  stored_sha       one artifact's file changed after it was written (same size, still a
                   whole JPEG; only its sha256 tells)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from imgq import __version__
from imgq.fleet import protocol

MODE = sys.argv[1]
SHARED_STORE = sys.argv[sys.argv.index("--shared-store") + 1] if "--shared-store" in sys.argv else None
OUT = sys.stdout.buffer
LOCK = threading.Lock()


def send_raw(data: bytes) -> None:
    with LOCK:
        OUT.write(data)
        OUT.flush()


def send(header: dict, blob: bytes = b"") -> None:
    send_raw(b"".join(bytes(p) for p in protocol.encode(header, blob)))


def frame(header_bytes: bytes, blob: bytes = b"") -> bytes:
    body = protocol.HEAD.pack(len(header_bytes)) + header_bytes + blob
    return protocol.FRAME.pack(len(body)) + body


def beats() -> None:
    while True:
        time.sleep(1.0)
        send({"type": "beat", "running": [], "waiting": [], "free_disk": 10 << 30})


def render(header: dict, blob: bytes) -> tuple[list[dict], list[bytes], dict]:
    """The reply the real agent would send: the real worker's artifacts."""
    from imgq.ledger import queue
    from imgq import work as worker
    from imgq.config import Settings

    work = Path(tempfile.mkdtemp(prefix="fake-agent-"))
    (work / "in").mkdir()
    src = work / "in" / "input"
    if header.get("path") is not None:
        root = os.environ.get("FAKE_SHARED_ROOT", "/")
        src.write_bytes((Path(root) / header["path"]).read_bytes())
    else:
        src.write_bytes(blob)
    job = header["job"]
    claim = queue.Claim(job, f"job{job}", "", header["spec"], header["spec_hash"], "", 1, 1, str(work / "in"), "input")
    o = worker.process(claim, Settings(store=work / "out", max_pixels=header["max_pixels"], jpeg_quality=header["quality"]))
    assert o.error is None, o.error
    listed = [{"name": a.name, "sha256": a.sha256, "bytes": a.bytes, "width": a.width, "height": a.height} for a in o.artifacts]
    blobs = [(work / "out" / (a.staged or a.path)).read_bytes() for a in o.artifacts]  # as the real agent: from the staged outputs
    return listed, blobs, o.result or {}


def stored(header: dict, blob: bytes, first: bool) -> None:
    """A job written into the shared store by the real worker code, the reply its header
    only; the first job's files damaged as MODE says."""
    from imgq.ledger import queue
    from imgq import work as worker
    from imgq.config import Settings

    work = Path(tempfile.mkdtemp(prefix="fake-agent-"))
    (work / "in").mkdir()
    (work / "in" / "input").write_bytes(blob if header.get("path") is None else (Path(os.environ.get("FAKE_SHARED_ROOT", "/")) / header["path"]).read_bytes())
    job, given = header["job"], header["store"]
    claim = queue.Claim(job, given["file"], "", header["spec"], header["spec_hash"], given["token"], 1, 1, str(work / "in"), "input")
    o = worker.process(claim, Settings(store=Path(SHARED_STORE), max_pixels=header["max_pixels"], jpeg_quality=header["quality"]))
    assert o.error is None, o.error
    if first:
        victim = Path(SHARED_STORE) / o.artifacts[0].staged
        if MODE == "stored_missing":
            victim.unlink()
        else:
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF  # inside the entropy-coded data: size and markers unchanged
            victim.write_bytes(bytes(data))
    listed = [{"name": a.name, "sha256": a.sha256, "bytes": a.bytes, "width": a.width, "height": a.height} for a in o.artifacts]
    send({"type": "done", "job": job, "artifacts": listed, "result": o.result or {}, "stored": True})


def misbehave(header: dict, blob: bytes) -> None:
    job = header["job"]
    listed, blobs, result = render(header, blob)
    done = {"type": "done", "job": job, "artifacts": listed, "result": result}
    if MODE == "bad_json":
        send_raw(frame(b'{"type": "done", "job": ' + str(job).encode() + b', oops'))
    elif MODE == "wrong_name":
        listed[0]["name"] = "not-in-the-recipe"
        send(done, b"".join(blobs))
    elif MODE == "duplicate":
        done["artifacts"] = [listed[0]] + listed
        send(done, blobs[0] + b"".join(blobs))
    elif MODE == "missing":
        done["artifacts"] = listed[:-1]
        send(done, b"".join(blobs[:-1]))
    elif MODE == "empty":
        done["artifacts"] = []
        send(done)
    elif MODE == "sizes":
        listed[0]["bytes"] += 1000
        send(done, b"".join(blobs))
    elif MODE == "big_field":
        listed[0]["bytes"] = 1 << 40
        send(done, b"".join(blobs))
    elif MODE == "wrong_pixels":
        listed[0]["width"], listed[0]["height"] = 6000, 4000
        send(done, b"".join(blobs))
    elif MODE == "not_jpeg":
        import hashlib

        junk = os.urandom(len(blobs[0]))
        listed[0]["sha256"] = hashlib.sha256(junk).hexdigest()
        send(done, junk + b"".join(blobs[1:]))
    elif MODE == "big_frame":
        head = json.dumps(done).encode()
        size = 3 << 30
        with LOCK:
            OUT.write(protocol.FRAME.pack(size) + protocol.HEAD.pack(len(head)) + head)
            zeros = bytes(1 << 20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                OUT.write(zeros)
            OUT.flush()
            time.sleep(60)
    elif MODE in ("truncated", "hang"):
        data = frame(json.dumps(done).encode(), b"".join(blobs))
        with LOCK:
            OUT.write(data[: len(data) // 2])
            OUT.flush()
            if MODE == "truncated":
                os._exit(0)
            time.sleep(60)  # holding the lock: no beat either, as a hung writer
    elif MODE == "twice":
        send(done, b"".join(blobs))
        send(done, b"".join(blobs))
    else:
        raise SystemExit(f"fake agent: unknown mode {MODE}")


def store_id() -> str | None:
    if SHARED_STORE is None:
        return None
    from imgq.store import OWNER_MARK

    return json.loads((Path(SHARED_STORE) / OWNER_MARK).read_text())["database_id"]


def main() -> None:
    send({"type": "hello", "protocol": protocol.PROTOCOL, "version": __version__, "python": sys.version.split()[0],
          "cores": 1, "slots": 1, "free_disk": 10 << 30, "libs": {}, "errors": {}, "pid": os.getpid(),
          "workdir": "/nonexistent", "shared_root": None, "shared_store": SHARED_STORE, "store_id": store_id()})
    threading.Thread(target=beats, daemon=True).start()
    answered = False
    while True:
        msg = protocol.read_message(sys.stdin.buffer.read, limit=lambda header, size: size)
        if msg is None:
            os._exit(0)  # the coordinator closed the session
        header, blob = msg
        if header["type"] == "job" and MODE.startswith("stored_"):
            stored(header, bytes(blob), first=not answered)
            answered = True
        elif header["type"] == "job" and not answered:
            answered = True
            misbehave(header, bytes(blob))


if __name__ == "__main__":
    main()
