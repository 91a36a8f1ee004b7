"""Videos through the fleet (issue 12, "Large files"): a video's original is streamed to
an agent in bounded pieces and its outputs streamed back, each checked as what it is;
chunks of a split video run on agents; a host lost mid-transfer costs a retry, never a
partial artifact; a video larger than the agent's memory limit goes through."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgq import imaging, original, store
from imgq.fleet import arrival, protocol, staging, videos
from imgq.ledger import queue
from imgq.samples import video as clips
from sshhosts import ssh_hosts  # noqa: F401
from test_video import GiB, MEMORY_LIMIT, big_video, files, q, run_limited, sha256_of, stream_facts

needs_ffmpeg = pytest.mark.skipif(not clips.have_ffmpeg(), reason="needs the ffmpeg and ffprobe programs (apt-get install ffmpeg)")
MiB = 1 << 20


def remote_imgq() -> str:
    return str(Path(sys.executable).parent / "imgq")


def aged(inbox: Path) -> None:
    old = time.time() - 120
    for p in inbox.rglob("*.*"):
        os.utime(p, (old, old))


def leftovers(store_dir: Path) -> list[Path]:
    """Files of attempts that did not complete: staged, temporary, spilled, parts."""
    return [p for p in store_dir.rglob("*") if p.is_file() and (p.name.endswith((".imgq-staged", ".imgq-tmp")) or ".imgq-tmp" in p.name or p.suffix == ".vpart")]


# ---------------------------------------------------------------- in process: what arrives is checked


def claim_for(spec: dict, stage: str = "") -> queue.Claim:
    return queue.Claim(7, "ann_1_walk.avi", "r", spec, "0123456789abcdef", "tok", 1, 5, "/nowhere", "walk.avi", stage)


def test_a_video_artifact_from_a_host_is_checked_as_a_video_never_as_a_jpeg(tmp_path):
    clip = clips.make_clip(tmp_path / "walk.avi", width=160, height=120, frames=12, fps=12)
    fd = os.open(clip, os.O_RDONLY)
    try:
        saved = imaging.encode_video(fd, "walk.avi", "video:codec=vp8", lambda ext: tmp_path / f"preview.{ext}")
    finally:
        os.close(fd)
    data = (tmp_path / "preview.webm").read_bytes()
    facts = videos.VideoFacts(clip.stat().st_size, 1.0, 12.0)
    claim = claim_for({"preview": "video:codec=vp8"})
    entry = {"name": "preview", "sha256": saved.sha256, "bytes": saved.bytes, "width": saved.width, "height": saved.height, "ext": "webm"}
    header = {"type": "done", "job": 7, "artifacts": [entry], "result": {"preview": {"frames": saved.frames, "encoder": saved.encoder}}}
    out = tmp_path / "store"
    [a], parts = arrival.receive_all(claim, header, data, out, max_pixels=10**8, video=facts)
    assert parts == [] and a.path.endswith(".webm") and (out / a.staged).read_bytes() == data

    def refused(header, blob, exc=arrival.ArtifactRejected, video=facts):
        with pytest.raises(exc) as e:
            arrival.receive_all(claim_for({"preview": "video:codec=vp8"}), header, blob, tmp_path / "refused", max_pixels=10**8, video=video)
        return str(e.value)

    # the frames stated are not the frames it holds
    assert "frames" in refused(dict(header, result={"preview": {"frames": saved.frames + 5}}), data)
    # it says mp4 but it is a WebM
    assert "container" in refused(dict(header, artifacts=[dict(entry, ext="mp4")]), data)
    # a JPEG sent as the video
    jpeg = (tmp_path / "x.jpg")
    from PIL import Image

    Image.new("RGB", (160, 120), "red").save(jpeg)
    j = jpeg.read_bytes()
    assert "not a video" in refused(dict(header, artifacts=[dict(entry, bytes=len(j), sha256=hashlib.sha256(j).hexdigest())]), j)
    # a video artifact for a photo's job, and one bigger than its chain can make of this video: refused before a byte is read
    assert "for a photo" in refused(header, data, arrival.BadReply, video=None)
    tiny = videos.VideoFacts(1000, 0.1, 12.0)
    cap = arrival.reply_limit(claim.spec, 10**8, tiny)
    with pytest.raises(arrival.BadReply, match="more than its chain can make"):
        arrival.check_reply(claim, dict(header, artifacts=[dict(entry, bytes=cap + 1)]), cap + 1, max_pixels=10**8, video=tiny)
    assert not list((tmp_path / "refused").rglob("*")) or all(p.is_dir() for p in (tmp_path / "refused").rglob("*"))


def test_a_chunks_parts_arrive_as_moves_for_the_fenced_completion(tmp_path):
    clip = clips.make_clip(tmp_path / "walk.avi", width=160, height=120, frames=20, fps=10)
    fd = os.open(clip, os.O_RDONLY)
    try:
        made = imaging.encode_chunks(fd, "walk.avi", {"preview": "preview"}, 1, 2, lambda art: tmp_path / "part.vpart", ffmpeg=None)
    finally:
        os.close(fd)
    data = (tmp_path / "part.vpart").read_bytes()
    claim = claim_for({"thumb": "thumb", "preview": "preview"}, stage="stripe:1/2")
    header = {"type": "done", "job": 7, "artifacts": [], "result": {"chunk": [1, 2], "parts": made},
              "parts": [{"name": "preview", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}]}
    facts = videos.VideoFacts(clip.stat().st_size, 2.0, 10.0)
    artifacts, [(staged, final)] = arrival.receive_all(claim, header, data, tmp_path / "store", max_pixels=10**8, video=facts)
    assert artifacts == [] and final == "ann_1_walk.avi/parts/preview-01234567.1of2.vpart"
    assert staged == store.staged_path(final, "tok") and (tmp_path / "store" / staged).read_bytes() == data
    with pytest.raises(arrival.BadReply, match="lacks part"):
        arrival.check_parts(claim, dict(header, parts=[]), 0, max_pixels=10**8, video=facts)
    with pytest.raises(arrival.ArtifactRejected, match="damaged"):
        bad = bytearray(data)
        bad[-1] ^= 1
        arrival.receive_all(claim, header, bytes(bad), tmp_path / "store2", max_pixels=10**8, video=facts)


def test_an_original_changed_while_it_streams_is_told_before_its_last_piece(tmp_path):
    path = tmp_path / "in" / "v.mp4"
    path.parent.mkdir()
    data = os.urandom(3 * protocol.CHUNK + 123)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    def stream(mutate):
        """(bytes sent, what was told by the time the last piece was in hand)."""
        told, by_last = [], None
        blob = staging.StreamedOriginal(original.Original(tmp_path / "in", "v.mp4"), digest, len(data), lambda m, k: told.append((m, k)))
        sent = bytearray()
        try:
            for i, piece in enumerate(blob.chunks()):
                sent += piece
                if i == 0:
                    mutate()
                if len(sent) == len(data):
                    by_last = list(told)  # the agent's verdict cannot come before this piece is sent
        finally:
            blob.close()
        return bytes(sent), by_last

    sent, told = stream(lambda: None)
    assert sent == data and told == []
    with open(path, "r+b") as f:  # the same size, other bytes near the end
        sent, told = stream(lambda: (f.seek(len(data) - 10), f.write(b"x" * 10), f.flush()))
    assert len(sent) == len(data) and [k for _, k in told] == ["permanent"] and "sha256 differs" in told[0][0]
    path.write_bytes(data)
    sent, told = stream(lambda: os.truncate(path, protocol.CHUNK + 5))  # it shrank: the frame is still whole
    assert len(sent) == len(data) and sent[protocol.CHUNK + 5:].count(0) == len(data) - protocol.CHUNK - 5
    assert [k for _, k in told] == ["permanent"] and "shrank" in told[0][0]


# ---------------------------------------------------------------- real agents


def imgq(cwd, *args, timeout=120, env=None):
    from conftest import imgq_subprocess

    return imgq_subprocess(*args, cwd=cwd, timeout=timeout, env=env)


@pytest.mark.slow  # the CLI, a coordinator and an agent in subprocesses
@needs_ffmpeg
def test_chunks_and_join_of_a_split_video_run_on_a_connect_back_agent_and_make_one_pass(tmp_path):
    from imgq.fleet import listen
    from test_connect_back import start_agent, start_coordinator

    inbox = tmp_path / "inbox"
    clips.make_clip_ffmpeg(inbox / "ann" / "long.mp4", width=320, height=240, seconds=4, fps=25)
    aged(inbox)
    made = {}
    for name in ("one", "tcp"):
        cwd = tmp_path / name
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        split = ["--split", "--split-seconds", "2", "--stripes", "2"] if name == "tcp" else []
        assert imgq(cwd, "enqueue", *split).returncode == 0
        if name == "one":
            r = imgq(cwd, "work", "-j1", timeout=300)
            assert r.returncode == 0, r.stderr
        else:
            p, _ = start_coordinator(cwd)
            a = start_agent(cwd, "--secret-file", cwd / "run.env", env={listen.ENV_NAME: "node-1"})
            try:
                _, err = p.communicate(timeout=300)
                a.wait(15)
            finally:
                for x in (p, a):
                    if x.poll() is None:
                        x.kill()
            assert p.returncode == 0, err
            assert "benched" not in err
        made[name] = {n: cwd / "imgq-store" / path for n, path in q(cwd / "imgq.db", "SELECT name, path FROM artifacts")}
    db = tmp_path / "tcp" / "imgq.db"
    ran = dict(q(db, "SELECT j.stage, e.host FROM events e JOIN jobs j ON j.id = e.job_id WHERE e.entity = 'job' AND e.to_state = 'done'"))
    assert ran == {"stripe:0/2": "node-1", "stripe:1/2": "node-1", "join:2": "node-1"}, ran  # chunks and join on the agent
    assert stream_facts(made["one"]["preview"]) == stream_facts(made["tcp"]["preview"])  # the frames and duration of one pass
    assert made["one"]["thumb"].read_bytes() == made["tcp"]["thumb"].read_bytes()
    assert leftovers(tmp_path / "tcp" / "imgq-store") == []  # the parts are gone once the join is recorded


def test_a_video_larger_than_the_agents_memory_limit_goes_through_work_hosts(tmp_path, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    inbox = tmp_path / "inbox"
    clip = big_video(inbox / "ann" / "long.mp4", MEMORY_LIMIT + GiB // 4)
    limited = ["prlimit", f"--as={MEMORY_LIMIT}"]
    # the limit bites: an agent that held the file in memory could not run under it
    whole = subprocess.run([*limited, sys.executable, "-c", f"open({str(clip)!r}, 'rb').read()"], capture_output=True, text=True)
    assert whole.returncode != 0 and "MemoryError" in whole.stderr
    for step in (("scan", inbox), ("enqueue",)):
        r = run_limited(tmp_path, *step)
        assert r.returncode == 0, (step, r.stderr)
    # the coordinator under the same limit, and the agent (and its slots, and ffmpeg) under prlimit
    r = run_limited(tmp_path, "work", "--drain", "--hosts", f"{host.alias}/1", "--ssh-config", host.ssh_config,
                    "--remote-imgq", " ".join([*limited, remote_imgq()]))
    assert r.returncode == 0, r.stderr
    assert "benched" not in r.stderr
    [row] = files(db_path).values()
    assert (row["kind"], row["state"]) == ("video", "processed")
    assert {n for (n,) in q(db_path, "SELECT name FROM artifacts")} == {"thumb", "web", "preview"}
    assert {h for (h,) in q(db_path, "SELECT host FROM events WHERE entity = 'job' AND to_state = 'done'")} == {host.alias}
    for path, digest in q(db_path, "SELECT path, sha256 FROM artifacts"):
        assert sha256_of(tmp_path / "imgq-store" / path) == digest


def staged_bytes(home: Path) -> int:
    """How much of an input an agent with this home has received so far."""
    n = 0
    for f in home.glob(".imgq/agent/s-*/in/.staged-*"):
        try:
            n = max(n, f.stat().st_size)
        except FileNotFoundError:  # complete: moved to in/<job>
            pass
    return n


def test_a_host_lost_mid_transfer_of_a_video_costs_a_retry_and_the_job_completes_once(tmp_path, db_path, ssh_hosts):
    hosts = ssh_hosts(2)
    inbox = tmp_path / "inbox"
    big_video(inbox / "ann" / "long.mp4", 640 * MiB)
    assert imgq(tmp_path, "scan", inbox).returncode == 0 and imgq(tmp_path, "enqueue").returncode == 0
    homes = {h.alias: tmp_path / f"home-{h.alias}" for h in hosts}
    # each agent in a home of its own, so the test sees which one is receiving the video
    (tmp_path / "hosts.txt").write_text("".join(f"{h.alias}/1 env HOME={homes[h.alias]} {remote_imgq()}\n" for h in hosts))
    from conftest import imgq_env

    p = subprocess.Popen([sys.executable, "-m", "imgq", "work", "--drain", "--hosts-file", "hosts.txt", "--ssh-config", hosts[0].ssh_config],
                         cwd=tmp_path, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.monotonic() + 120, None
        while victim is None:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:] if p.poll() is not None else "no transfer seen"
            for h in hosts:
                if staged_bytes(homes[h.alias]) > 64 * MiB:
                    victim = h
            time.sleep(0.02)
        victim.kill()  # the host dies with a part of the video on it
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    [row] = files(db_path).values()
    assert row["state"] == "processed"
    [(state, lost, attempts)] = q(db_path, "SELECT state, lost, attempts FROM jobs")
    assert (state, lost, attempts) == ("done", 1, 2)
    [(done_on,)] = q(db_path, "SELECT host FROM events WHERE entity = 'job' AND to_state = 'done'")  # done exactly once...
    assert done_on != victim.alias  # ...by the other host
    assert {n for (n,) in q(db_path, "SELECT name FROM artifacts")} == {"thumb", "web", "preview"}
    for path, digest in q(db_path, "SELECT path, sha256 FROM artifacts"):
        assert sha256_of(tmp_path / "imgq-store" / path) == digest
    assert leftovers(tmp_path / "imgq-store") == []  # nothing of the lost attempt became (or stayed as) a file
