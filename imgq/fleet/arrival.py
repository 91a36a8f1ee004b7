"""Artifacts arriving from a host: checked and written into the coordinator's store.

An agent's ``done`` message carries each artifact's name, sha256, size, width and height,
then the bytes end to end. Nothing it says is trusted, and it is checked in two steps:

- the header, before a byte of the blob is read (``check_reply``): the reply is for a
  job the host holds, lists every artifact the job's recipe makes exactly once and no
  other (or none at all, when the recipe's own ``on_no_faces = "skip"`` option applies
  and the result says so), each with a well-formed sha256 and a width, height and size a
  JPEG of that chain can have at the settings' pixel limit, and the sizes add up to the
  blob. A header that fails is a ``BadReply``: the host is benched, never the coordinator
  crashed (an artifact listed twice used to end in an IntegrityError; an empty list in a
  job done with nothing made);
- the bytes (``receive``): each artifact is streamed to a temporary name in the store,
  hashed as it is written, must hash and measure as stated and decode at the stated size,
  and lands under the name the coordinator computes (never one sent to it).

``reply_limit`` is the most a ``done`` frame of a job may carry, derived from the recipe
and ``max_pixels`` (and, for a video's job, its running time: ``imgq.fleet.videos``); the
link refuses a bigger frame before reading it.

A video's job (``receive_all`` with its ``videos.VideoFacts``) sends its stills, checked
as above, and its video artifacts, each checked as a video of the container it names,
of its stated frame count and size, never as a JPEG; a chunk of a split video sends its
parts instead, which become the outcome's ``parts`` (staged, final) moves.

With a shared store (``imgq work --shared-store``, a photo's job) no bytes follow the
header: the agent wrote each artifact into the store under the staged name this
attempt's lease token makes, and ``accept_stored`` checks the header as above, then each
file (a regular file of the stated size, sha256 and frame size, a whole JPEG) where it is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import threading
from pathlib import Path

from imgq import faces, imaging, recipes, store
from imgq.fleet import protocol
from imgq.ledger import queue
from imgq.errors import BadImage, ImgqError
from imgq.ops import get, parse_chain

# What one JPEG artifact may weigh: random noise at quality 100 without chroma
# subsampling measured 4.1 bytes a pixel; 8 leaves room. Metadata: an ICC profile may fill
# up to 255 APP2 segments of 64 kB (16.3 MB), EXIF one APP1 segment.
JPEG_BYTES_PER_PIXEL = 8
METADATA_BYTES = 17 << 20
SHA256 = re.compile(r"[0-9a-f]{64}$")
_FIELDS = {"name", "sha256", "bytes", "width", "height"}


class ArtifactRejected(ImgqError):
    """What an agent sent does not check out (damaged in transit, wrong size, not a JPEG)."""


class BadReply(protocol.ProtocolError):
    """An agent's reply breaks the protocol: artifacts missing, repeated, unknown, or
    sizes that do not add up. The host is at fault, not the photo."""


@functools.lru_cache(maxsize=256)  # asked for every reply; a run has a few recipes
def fit_bounds(chain: str, max_pixels: int) -> tuple[int | None, int | None, int]:
    """(max width, max height, max pixels) of what ``chain`` can make from an input of at
    most ``max_pixels``: the smallest box of its fit steps (no operation enlarges)."""
    bw = bh = None
    for step in parse_chain(chain):
        op = get(step.op)
        if op.fit_box:
            w, h = op.fit_box(step.params)
            bw, bh = (w if bw is None else min(bw, w)), (h if bh is None else min(bh, h))
    pixels = max_pixels if bw is None else min(max_pixels, bw * bh)
    return bw, bh, pixels


def artifact_limit(chain: str, max_pixels: int) -> int:
    """The most bytes one artifact of ``chain`` can legitimately have."""
    return fit_bounds(chain, max_pixels)[2] * JPEG_BYTES_PER_PIXEL + METADATA_BYTES


def reply_limit(spec: dict, max_pixels: int, video=None) -> int:
    """The most blob bytes a ``done`` reply for a job of this recipe can carry (for a
    video's job, ``video`` holds the journal's facts of it: ``videos.VideoFacts``)."""
    chains, _ = recipes.split_spec(spec)
    if video is None:
        return sum(artifact_limit(c, max_pixels) for c in chains.values())
    from imgq.fleet import videos

    return sum(videos.video_limit(c, max_pixels, video) if recipes.is_video_chain(c) else artifact_limit(c, max_pixels) for c in chains.values())


def check_reply(claim: queue.Claim, header: dict, blob_size: int, *, max_pixels: int, video=None, stored: bool = False) -> list[dict]:
    """The artifacts a ``done`` header lists, checked against the job's recipe (see the
    module docstring); BadReply naming what is wrong. For a video's job (``video``: its
    ``videos.VideoFacts``) its video artifacts are checked as ``imgq.fleet.videos`` says;
    a chunk of a split video lists parts instead (``check_parts``). ``stored``: the agent
    wrote them into the shared store (``accept_stored``), no bytes follow."""
    job = f"job {claim.job_id}"
    chains, options = recipes.split_spec(claim.spec)
    listed, result = header.get("artifacts"), header.get("result")
    if not isinstance(listed, list):
        raise BadReply(f"{job}: the reply's artifacts are not a list ({type(listed).__name__})")
    if result is not None and not isinstance(result, dict):
        raise BadReply(f"{job}: the reply's result is not an object")
    if claim.stage.startswith("stripe:") or "parts" in header:
        if video is None or not claim.stage.startswith("stripe:") or listed:
            raise BadReply(f"{job}: a reply with parts is only for the chunk of a split video, and has no artifact")
        return []
    if faces.skips(options, result) and isinstance(result, dict) and result.get("skipped"):
        if listed or blob_size:
            raise BadReply(f"{job}: the reply says the photo was skipped (on_no_faces = skip) but sends artifacts")
        return []
    seen: dict[str, int] = {}
    for a in listed:
        _check_entry(job, a, chains, max_pixels, video, result)
        seen[a["name"]] = seen.get(a["name"], 0) + 1
    twice = sorted(n for n, k in seen.items() if k > 1)
    missing = sorted(set(chains) - set(seen))
    if twice:
        raise BadReply(f"{job}: the reply lists artifact {', '.join(twice)} more than once")
    if missing:
        raise BadReply(f"{job}: the reply lacks artifact {', '.join(missing)} of the recipe ({len(listed)} of {len(chains)} sent)")
    total = sum(a["bytes"] for a in listed)
    if stored:
        if blob_size:
            raise BadReply(f"{job}: the reply says its artifacts are in the shared store but sends {blob_size} bytes")
    elif total != blob_size:
        raise BadReply(f"{job}: the reply's artifacts add up to {total} bytes but {blob_size} bytes follow")
    return [{k: a[k] for k in _FIELDS | ({"ext"} if "ext" in a else set())} for a in listed]


def check_parts(claim: queue.Claim, header: dict, blob_size: int, *, max_pixels: int, video) -> list[dict]:
    """The parts a chunk's ``done`` header lists (``videos.check_parts``), adding up to
    the blob; BadReply naming what is wrong."""
    from imgq.fleet import videos

    job = f"job {claim.job_id}"
    parts = videos.check_parts(job, header.get("parts"), claim.spec, max_pixels, video, header.get("result"))
    total = sum(p["bytes"] for p in parts)
    if total != blob_size:
        raise BadReply(f"{job}: the reply's parts add up to {total} bytes but {blob_size} bytes follow")
    return parts


def _check_entry(job: str, a, chains: dict, max_pixels: int, video=None, result=None) -> None:
    if not isinstance(a, dict) or not _FIELDS <= set(a):
        raise BadReply(f"{job}: an artifact entry is not an object with {', '.join(sorted(_FIELDS))}")
    name = a["name"]
    if not isinstance(name, str) or name not in chains:
        raise BadReply(f"{job}: the reply sends an artifact {str(name)[:100]!r} the recipe does not make")
    for k in ("bytes", "width", "height"):
        if type(a[k]) is not int or a[k] < 1:
            raise BadReply(f"{job}: artifact {name}: {k} = {str(a[k])[:40]!r} is not a positive whole number")
    if not isinstance(a["sha256"], str) or not SHA256.match(a["sha256"]):
        raise BadReply(f"{job}: artifact {name}: {str(a['sha256'])[:80]!r} is not a sha256")
    bw, bh, pixels = fit_bounds(chains[name], max_pixels)
    if a["width"] * a["height"] > pixels or (bw is not None and (a["width"] > bw or a["height"] > bh)):
        raise BadReply(f"{job}: artifact {name}: {a['width']}x{a['height']} is larger than its chain can make")
    if recipes.is_video_chain(chains[name]):
        if video is None:
            raise BadReply(f"{job}: the reply sends a video artifact {name} for a photo")
        from imgq.fleet import videos

        videos.check_video_entry(job, a, chains[name], max_pixels, video, result)
        return
    if "ext" in a:
        raise BadReply(f"{job}: artifact {name} is a still (a JPEG) but the reply names a container for it")
    cap = artifact_limit(chains[name], max_pixels)
    if a["bytes"] > cap:
        raise BadReply(f"{job}: artifact {name}: {a['bytes']} bytes is more than its chain can make ({cap})")


def receive(claim: queue.Claim, header: dict, blob: protocol.Blob | bytes | memoryview, store_dir: Path, *, max_pixels: int) -> list[queue.Artifact]:
    """Check and store the artifacts of a ``done`` message: the header as ``check_reply``
    says (BadReply), then each artifact's bytes: the sha256 and size stated, a JPEG that
    decodes at the stated width and height (ArtifactRejected), landing in the store
    atomically (temporary name, fsync, rename; the folder is fsynced by the settle that
    moves it onto its final name)."""
    return receive_all(claim, header, blob, store_dir, max_pixels=max_pixels)[0]


def receive_all(claim: queue.Claim, header: dict, blob: protocol.Blob | bytes | memoryview, store_dir: Path, *, max_pixels: int,
                video=None) -> tuple[list[queue.Artifact], list[tuple[str, str]]]:
    """``receive`` for any job: (artifacts, parts). A video's job (``video``: its
    ``videos.VideoFacts``) may send video artifacts, each checked as a video of its
    container, frame count and size, never as a JPEG; a chunk of a split video sends
    its parts, returned as the (staged, final) moves of ``queue.Outcome.parts``. Every
    file is streamed from ``blob`` to its staged name: never held whole in memory."""
    if not isinstance(blob, protocol.Blob):
        blob = protocol.MemoryBlob(blob)
    if "parts" in header or claim.stage.startswith("stripe:"):
        return [], _receive_parts(claim, header, blob, store_dir, max_pixels=max_pixels, video=video)
    listed = check_reply(claim, header, blob.size, max_pixels=max_pixels, video=video)
    out, offset = [], 0
    for a in listed:
        name, size = a["name"], a["bytes"]
        rel = store.artifact_path(claim.file_id, name, claim.spec_hash, a.get("ext", "jpg"))
        # written under this attempt's staged name: queue.settle moves it onto ``rel``
        # only if the lease still holds (a late reply never replaces a recorded result)
        staged = store.staged_path(rel, claim.token)
        if "ext" in a:
            from imgq.fleet import videos

            frames = videos.frames_stated(f"job {claim.job_id}", header.get("result"), name)
            check = lambda tmp, a=a, frames=frames: videos.verify_video(  # noqa: E731
                tmp, kind={videos.VIDEO_EXTS[a["ext"]]}, frames=frames, width=a["width"], height=a["height"], what=f"video artifact {a['name']} from the host")
            _write_checked(store_dir / staged, blob.chunks(offset, size), check, sha256=a["sha256"], name=name)
        else:
            _write_verified(store_dir / staged, blob.chunks(offset, size), a["width"], a["height"], sha256=a["sha256"], name=name)
        offset += size
        out.append(queue.Artifact(name, rel, a["sha256"], size, a["width"], a["height"], staged=staged))
    return out, []


def _receive_parts(claim: queue.Claim, header: dict, blob: protocol.Blob, store_dir: Path, *, max_pixels: int, video) -> list[tuple[str, str]]:
    """A chunk's parts, each checked (sha256, size, a video of its frames) and written to
    its staged name; the (staged, final) moves."""
    from imgq import split as splitting
    from imgq.fleet import videos

    if video is None:
        raise BadReply(f"job {claim.job_id}: a reply with parts for a photo's job")
    kind, index, count = splitting.parse_stage(claim.stage)
    listed = check_parts(claim, header, blob.size, max_pixels=max_pixels, video=video)
    moves, offset = [], 0
    for p in listed:
        final = splitting.part_path(claim.file_id, p["name"], claim.spec_hash, index, count, ext="vpart")
        staged = store.staged_path(final, claim.token)
        frames = videos.frames_stated(f"job {claim.job_id}", header.get("result"), p["name"], where="parts")
        check = lambda tmp, p=p, frames=frames: videos.verify_video(  # noqa: E731
            tmp, kind=videos.PART_KINDS, frames=frames, what=f"chunk {index + 1} of {count} of {p['name']} from the host")
        _write_checked(store_dir / staged, blob.chunks(offset, p["bytes"]), check, sha256=p["sha256"], name=p["name"])
        offset += p["bytes"]
        moves.append((staged, final))
    return moves


def _write_checked(dest: Path, data, check_file, *, sha256: str, name: str) -> None:
    """``data`` (chunks) written under a temporary name beside ``dest``, hashed as
    written, its sha256 compared and ``check_file(tmp)`` run (a video's own check),
    then renamed to ``dest``; ArtifactRejected if either fails."""
    h = hashlib.sha256()

    def write(f) -> None:
        for chunk in data:
            h.update(chunk)
            f.write(chunk)

    def check(tmp: Path) -> None:
        if h.hexdigest() != sha256:
            raise ArtifactRejected(f"{name} arrived damaged (its sha256 differs from what the host sent)")
        try:
            check_file(Path(tmp))
        except BadImage as e:  # BadVideo is one
            raise ArtifactRejected(f"does not verify: {e}") from None

    # the staged name is not fsynced into its folder here: settle renames it onto its final
    # name in the same folder and fsyncs that folder before the commit that records it
    store.write_atomically(dest, write, check=check, sync_folder=False)


def accept_stored(claim: queue.Claim, header: dict, store_dir: Path, *, max_pixels: int) -> list[queue.Artifact]:
    """The artifacts of a ``done`` reply whose agent wrote them into the shared store
    itself (``imgq work --shared-store``): the header checked as ``check_reply`` says
    (BadReply), then each file under the staged name the coordinator computes (from the
    file, recipe and this attempt's lease token: never a name the agent sent) must be a
    regular file, not a link, of the stated size, whose bytes have the stated sha256 and
    are a whole JPEG (start and end markers) of the stated width and height (its frame
    header); else ArtifactRejected. The agent's slot checked it as written (as a local
    worker does: sha256, header, end marker) and fsynced it before the reply, so what is
    left to guard here is a file missing (a host that does not see this store), torn or
    changed since: reading and hashing a few kB is cheap, decoding it again is not."""
    listed = check_reply(claim, header, 0, max_pixels=max_pixels, stored=True)
    out = []
    for a in listed:
        rel = store.artifact_path(claim.file_id, a["name"], claim.spec_hash)
        staged = store.staged_path(rel, claim.token)
        _check_stored(store_dir / staged, a)
        out.append(queue.Artifact(a["name"], rel, a["sha256"], a["bytes"], a["width"], a["height"], staged=staged))
    return out


def staged_names(claim: queue.Claim) -> list[str]:
    """Every staged name an attempt at ``claim`` may have written, one per artifact of its recipe."""
    chains, _ = recipes.split_spec(claim.spec)
    return [store.staged_path(store.artifact_path(claim.file_id, name, claim.spec_hash), claim.token) for name in chains]


def _check_stored(path: Path, a: dict) -> None:
    name = a["name"]
    try:
        # the photo's folder and the file, neither followed if a link: what is read (and
        # then moved into place) is in the store
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
        finally:
            os.close(folder)
    except FileNotFoundError:
        raise ArtifactRejected(f"artifact {name} is not in the shared store ({path}): does the host see this store at the same path?") from None
    except OSError as e:
        raise ArtifactRejected(f"artifact {name} in the shared store ({path}) cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactRejected(f"artifact {name} in the shared store ({path}) is not a regular file")
        if st.st_size != a["bytes"]:
            raise ArtifactRejected(f"artifact {name} in the shared store ({path}) has {st.st_size} bytes, the host said {a['bytes']}")
        data = os.read(fd, st.st_size + 1)
        while len(data) <= st.st_size:  # a file of a network file system may come in pieces
            more = os.read(fd, st.st_size + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as e:
        raise ArtifactRejected(f"artifact {name} in the shared store ({path}) cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) != a["bytes"] or hashlib.sha256(data).hexdigest() != a["sha256"]:
        raise ArtifactRejected(f"artifact {name} in the shared store ({path}) does not have the sha256 the host sent (changed or torn since it was written)")
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        raise ArtifactRejected(f"artifact {name} in the shared store ({path}) is not a whole JPEG")
    size = jpeg_size(data)
    if size != (a["width"], a["height"]):
        raise ArtifactRejected(f"artifact {name} in the shared store ({path}) is {size[0]}x{size[1]} by its header, the host said {a['width']}x{a['height']}"
                               if size else f"artifact {name} in the shared store ({path}) has no JPEG frame header")


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its segments (a few: APPn,
    DQT, DHT) without decoding anything; None if there is none before the scan."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # the scan (or the end) before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


# imaging sets Pillow's pixel limit and warning filters process-wide while it decodes: two
# threads verifying at once would see each other's limits (a 160x120 web version failed
# against a 120x90 thumb's limit as "wrong size"). Verifications take turns.
_VERIFY = threading.Lock()


def _write_verified(dest: Path, data, width: int, height: int, *, sha256: str | None = None, name: str = "") -> None:
    """``data`` (bytes, or an iterable of chunks) written under a temporary name beside
    ``dest``, hashed as written, checked (sha256, a JPEG decoding at width x height),
    then renamed to ``dest``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = [data]
    h, first = hashlib.sha256(), bytearray()

    def write(f) -> None:
        nonlocal first
        for chunk in data:
            h.update(chunk)
            if len(first) < 3:
                first += bytes(chunk[: 3 - len(first)])
            f.write(chunk)

    def check(tmp: Path) -> None:
        if sha256 is not None and h.hexdigest() != sha256:
            raise ArtifactRejected(f"artifact {name} arrived damaged (its sha256 differs from what the host sent)")
        if first != b"\xff\xd8\xff":
            raise ArtifactRejected(f"artifact {name} from the host is not a JPEG")
        try:
            with _VERIFY:
                imaging.verify(tmp, width, height)
        except BadImage as e:
            raise ArtifactRejected(f"artifact from the host does not verify: {e}") from None

    # the temporary name (store.temp_name) carries our pid, like imaging.save's, for store.sweep_temp
    # the staged name is not fsynced into its folder here: settle renames it onto its final
    # name in the same folder and fsyncs that folder before the commit that records it
    store.write_atomically(dest, write, check=check, sync_folder=False)
