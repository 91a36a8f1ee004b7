"""Face detection with OpenCV's Haar cascade, and the ``faces`` operation that marks them.

Detection runs on a copy scaled so its longer side is about 640 pixels: on a full
12-24 MP photo the cascade takes seconds and finds many false faces in texture, on the
downscale about 65 ms. Boxes are mapped back to the coordinates of the given image.
"""

from __future__ import annotations

import functools

from imgq.ops.lazy import cv2, np
from PIL import Image, ImageDraw

from imgq.ops import cv
from imgq.ops.registry import WHOLE_IMAGE, Param, parse_int, register

DETECT_SIDE = 640

Box = tuple[int, int, int, int]  # x, y, width, height


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    # loaded once per process: parsing the XML takes longer than one detection
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise RuntimeError(f"OpenCV's face cascade could not be loaded from {path}")
    return c


# Measured on skimage's astronaut at 512-3000 px (one face) and on 13 face-free photos
# and generated scenes: 8 finds the face at every size with no false ones; 5 finds
# extra "faces" in the astronaut's hands and flag at 1024 px and above.
MIN_NEIGHBORS = 8


def detect_faces(image: Image.Image, *, min_neighbors: int = MIN_NEIGHBORS) -> list[Box]:
    """Boxes (x, y, width, height) of frontal faces in ``image``, in its own pixels.

    Sorted left to right, top to bottom. ``min_neighbors`` trades misses for false
    detections (higher: fewer of both kinds of faces).
    """
    grey = cv.to_uint8(cv.luminance(cv.to_arrays(image)))
    h, w = grey.shape
    scale = min(1.0, DETECT_SIDE / max(w, h))
    small = grey if scale == 1.0 else cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    found = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(24, 24))
    boxes = []
    for x, y, bw, bh in np.asarray(found).reshape(-1, 4):
        x0, y0 = int(x / scale), int(y / scale)
        x1, y1 = min(w, round((x + bw) / scale)), min(h, round((y + bh) / scale))
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    return sorted(boxes, key=lambda b: (b[0], b[1]))


@register(
    "faces",
    Param("width", parse_int(0, 64), 0, str, "line width in pixels (0: about 1/200 of the longer side)"),
    reach=lambda p: WHOLE_IMAGE,
)
def faces(image: Image.Image, *, width: int = 0) -> Image.Image:
    """Draw a box around each frontal face found.

    The boxes are also left in the result's ``info["faces"]`` as (x, y, width, height)
    in its pixels, for the caller to record. Example chain: ``web|faces``
    """
    boxes = detect_faces(image)
    a = cv.to_arrays(image)
    a.colour = cv.to_uint8(a.colour)
    out = cv.from_arrays(a)
    out = out.convert("RGBA" if a.alpha is not None else "RGB")  # so boxes can be coloured
    line = width or max(2, max(out.size) // 200)
    draw = ImageDraw.Draw(out)
    for x, y, w, h in boxes:
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 64, 0), width=line)
    out.info["faces"] = boxes
    return out
