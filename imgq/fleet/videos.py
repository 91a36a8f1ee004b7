"""A video's jobs in the fleet: how big an agent's reply may be, and how the video
artifacts and chunk parts it sends are checked before they are stored.

A video job's ``done`` reply carries its stills (JPEGs, checked by ``imgq.fleet.arrival``
as a photo's are) and its video artifacts, each naming its container (``ext``: mp4 or
webm); a chunk of a split video (stage ``stripe:I/N``) carries no artifact but one part
per video chain. Nothing the agent says is trusted:

- before a byte is read, each video artifact and part must fit what its chain can make
  of this video (``video_limit``: the frames its running time and frame-rate cap allow,
  at its fit box, at most 8 bytes a pixel, plus the original's own size for its audio),
  and its frame count must be stated in the reply's result;
- its bytes must hash and measure as stated, be the container it says (a sniff of its
  first bytes), and open as a video of the stated frame count (within one: WebM's count
  is an estimate) and, for an artifact, frame size. A poster is still a JPEG of its size.
"""

from __future__ import annotations

import dataclasses
import math

from imgq import imaging, recipes
from imgq.errors import BadVideo
from imgq.fleet.arrival import SHA256, BadReply, fit_bounds

VIDEO_EXTS = {"mp4": "MP4", "webm": "WEBM"}  # what a video artifact may be: its container
PART_KINDS = {"MP4", "AVI"}  # a chunk's part: H.264 MP4 (ffmpeg) or MJPG AVI (OpenCV)
BYTES_PER_PIXEL = 8  # as for a JPEG: every frame of a video could be an intra frame
CONTAINER_BYTES = 16 << 20  # headers, index, and slack


class BadVideoReply(BadReply):
    """A video job's reply breaks the protocol (parts missing, unknown, too big)."""


@dataclasses.dataclass(frozen=True)
class VideoFacts:
    """What the journal knows of a video, for the limits of its replies."""

    size: int  # bytes of the original
    duration: float | None  # seconds
    frame_rate: float | None


def video_limit(chain: str, max_pixels: int, facts: VideoFacts) -> int:
    """The most bytes one video artifact (or chunk part) of ``chain`` can have for this
    video: every frame it may keep at its fit box and 8 bytes a pixel, plus the
    original's size (its audio goes along) and room for the container."""
    from imgq.imaging.video_encode import video_params

    _, _, pixels = fit_bounds(chain, max_pixels)
    if not facts.duration or facts.duration <= 0:
        return facts.size * 64 + CONTAINER_BYTES  # no running time recorded: bounded by the input
    cap = video_params(chain)[0]["fps"]
    rate = facts.frame_rate or cap or 30.0
    fps = min(rate, cap) if cap else rate
    frames = math.ceil(facts.duration * fps * 1.1) + 16  # slack: containers round, WebM estimates
    return frames * pixels * BYTES_PER_PIXEL + facts.size + CONTAINER_BYTES


def movies(spec: dict) -> dict[str, str]:
    """The video chains of a job's spec: {artifact: chain}."""
    chains, _ = recipes.split_spec(spec)
    return {n: c for n, c in chains.items() if recipes.is_video_chain(c)}


def frames_stated(job: str, result, name: str, *, where: str = "") -> int:
    """The frame count the reply's result states for video artifact (or part) ``name``."""
    entry = (result or {}).get("parts", {}) if where == "parts" else (result or {})
    entry = entry.get(name) if isinstance(entry, dict) else None
    frames = entry.get("frames") if isinstance(entry, dict) else None
    if type(frames) is not int or frames < 0:
        raise BadVideoReply(f"{job}: the reply's result states no frame count for video {str(name)[:100]!r}")
    return frames


def check_video_entry(job: str, a: dict, chain: str, max_pixels: int, facts: VideoFacts, result) -> None:
    """A video artifact's entry in a ``done`` header: its container, size and frames."""
    ext = a.get("ext")
    if ext not in VIDEO_EXTS:
        raise BadVideoReply(f"{job}: video artifact {a['name']}: {str(ext)[:20]!r} is not one of {', '.join(VIDEO_EXTS)}")
    cap = video_limit(chain, max_pixels, facts)
    if a["bytes"] > cap:
        raise BadVideoReply(f"{job}: video artifact {a['name']}: {a['bytes']} bytes is more than its chain can make of this video ({cap})")
    if frames_stated(job, result, a["name"]) < 1:
        raise BadVideoReply(f"{job}: video artifact {a['name']} has no frames")


def check_parts(job: str, listed, spec: dict, max_pixels: int, facts: VideoFacts, result) -> list[dict]:
    """The parts a chunk's ``done`` header lists: one per video chain of the job, each
    {name, sha256, bytes} within what its chain can make of this video."""
    wanted = movies(spec)
    if not isinstance(listed, list):
        raise BadVideoReply(f"{job}: a chunk's reply lists no parts")
    seen = set()
    for p in listed:
        if not isinstance(p, dict) or not {"name", "sha256", "bytes"} <= set(p):
            raise BadVideoReply(f"{job}: a part entry is not an object with name, sha256, bytes")
        name = p["name"]
        if not isinstance(name, str) or name not in wanted or name in seen:
            raise BadVideoReply(f"{job}: the reply sends a part {str(name)[:100]!r} the recipe does not make, or twice")
        seen.add(name)
        if type(p["bytes"]) is not int or p["bytes"] < 0 or p["bytes"] > video_limit(wanted[name], max_pixels, facts):
            raise BadVideoReply(f"{job}: part {name}: {str(p['bytes'])[:40]!r} bytes is not a size its chain can make")
        if not isinstance(p["sha256"], str) or not SHA256.match(p["sha256"]):
            raise BadVideoReply(f"{job}: part {name}: {str(p['sha256'])[:80]!r} is not a sha256")
        frames_stated(job, result, name, where="parts")
    if seen != set(wanted):
        raise BadVideoReply(f"{job}: the reply lacks part {', '.join(sorted(set(wanted) - seen))} of the chunk")
    return [{k: p[k] for k in ("name", "sha256", "bytes")} for p in listed]


def verify_video(tmp, *, kind: set[str], frames: int, width: int | None = None, height: int | None = None, what: str) -> None:
    """The file at ``tmp`` is a video of container ``kind`` holding ``frames`` frames
    (within one) of ``width`` x ``height``; BadVideo naming ``what`` otherwise. An empty
    chunk part (every frame of its share dropped by the rate cap) is zero bytes."""
    if frames == 0:
        if tmp.stat().st_size != 0:
            raise BadVideo(f"{what} should be empty (no frames) but is not")
        return
    with open(tmp, "rb") as f:
        container = imaging.sniff_video(f.read(64))
    if container not in kind:
        raise BadVideo(f"{what} is not a video of the container it names ({container or 'not a video'})")
    imaging.check_video(tmp, frames=frames, width=width, height=height, name=what)
