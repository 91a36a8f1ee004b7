"""Reading and writing image files: the only package that does (besides the lossless
stripe parts of imgq.split.run).

Modules, each importing only those above it in this list:

- ``source``: the original as a ``Source``: bytes its caller read once through
  ``imgq.original.Original`` and checked against the journal's sha256 (or an open file
  descriptor read with pread), so what is decoded is exactly what was verified and no
  path is ever reopened; a plain path is accepted for imgq's own files (artifacts, tests);
- ``formats``: ``SUPPORTED``, the one list of formats imgq reads; ``sniff`` names a
  format from the first bytes of a file; opening header-first under the pixel limit;
- ``metadata``: EXIF (orientation, capture time, camera), ICC, the minimal EXIF of outputs;
- ``pixels``: working modes, EXIF orientation, an original decoded once;
- ``raw``: camera RAW through the raw extra (rawpy);
- ``decode``: ``probe`` reads the header and EXIF of an original without decoding
  pixels; one decode of the pixels (DCT-scaled for JPEG when every output is smaller);
- ``render``: applies EXIF orientation and runs every chain of a recipe on one decode;
- ``video``: video containers: ``sniff_video``, ``probe_video`` (OpenCV, ffprobe),
  ``render_stills`` (a recipe's stills from a representative frame);
- ``video_encode``: a recipe's video chains from one decode (``encode_videos``: H.264/AAC
  through the ffmpeg program, else VP8/VP9 WebM through OpenCV), in chunks on frame
  boundaries (``encode_chunks``) and their join (``join_chunks``); ``check_video``
  checks a video made elsewhere (an agent's) before it is stored;
- ``video_pass``: plain H.264 chains (no per-frame step) made by the ffmpeg program alone,
  one process decoding once for every chain and the poster's samples
  (``encode_videos_and_poster``), a chunk's likewise with its poster candidate, and the
  join's choice among those (``pick_poster``); ``video_encode`` hands them over to it;
- ``encode``: ``save`` encodes a rendered artifact as JPEG atomically and verifies it;
  ``verify`` checks that a file on disk decodes fully to the expected size.

Errors are classified here: a bad input is ``BadImage`` or ``TooLarge`` (permanent), a
failing disk is ``StorageError`` (transient). Names with a leading underscore are shared
between these modules only; other packages use the names re-exported below.

May import: ops, errors, store, original. Never the ledger, the fleet, steps or the CLI.
"""

from imgq.imaging.decode import probe
from imgq.imaging.encode import Saved, jpeg_ready, save, verify
from imgq.imaging.formats import FORMAT_NAMES, FORMATS, SUPPORTED, sniff
from imgq.imaging.metadata import Probe, minimal_exif
from imgq.imaging.pixels import working_image
from imgq.imaging.render import Rendered, render
from imgq.imaging.source import Source
from imgq.imaging.video import VIDEO_FORMAT_NAMES, VIDEO_FORMATS, VideoProbe, probe_video, render_stills, sniff_video
from imgq.imaging.video_chunks import encode_chunks, join_chunks
from imgq.imaging.video_encode import VideoSaved, check_video, encode_video, encode_videos, encode_videos_and_poster
from imgq.imaging.video_pass import pick_poster

__all__ = [
    "FORMATS", "FORMAT_NAMES", "SUPPORTED", "Probe", "Rendered", "Saved", "Source",
    "jpeg_ready", "minimal_exif", "probe", "render", "save", "sniff", "verify", "working_image",
    "VIDEO_FORMATS", "VIDEO_FORMAT_NAMES", "VideoProbe", "VideoSaved", "check_video", "encode_chunks", "encode_video", "encode_videos", "encode_videos_and_poster", "join_chunks", "pick_poster", "probe_video", "render_stills", "sniff_video",
]
