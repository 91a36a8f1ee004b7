"""Face detection with OpenCV's Haar cascade, and the ``faces`` operation that marks them.

Detection runs on a copy scaled so its longer side is about 640 pixels: on a full
12-24 MP photo the cascade takes seconds and finds many false faces in texture, on the
downscale about 65 ms. Boxes are mapped back to the coordinates of the given image.

The frontal-face cascade alone takes texture for faces (coins, cells, leaves: 9 of 110
face-free pictures had one). Each candidate is therefore verified before it counts: a
second, differently trained face cascade (``alt2``) must find it again, and a face seen
large enough in the given image must also show at least one eye to OpenCV's eye
cascades, looked for in the upper part of the box at a fixed size (either check alone
let texture through: 1 or 2 of the 110). Measured by tests/test_face_accuracy.py: no
false face in those 110 pictures, the astronaut's one face at every size, 93 of the 100
LFW faces (97 unverified).
"""

from __future__ import annotations

import functools

from imgq.ops.lazy import cv2, np
from PIL import Image, ImageDraw

from imgq.ops import cv
from imgq.ops.registry import WHOLE_IMAGE, Param, parse_int, register

DETECT_SIDE = 640

Box = tuple[int, int, int, int]  # x, y, width, height


@functools.lru_cache(maxsize=None)
def _cascade(name: str = "frontalface_default") -> cv2.CascadeClassifier:
    # loaded once per process: parsing the XML takes longer than one detection
    path = cv2.data.haarcascades + f"haarcascade_{name}.xml"
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise RuntimeError(f"OpenCV's cascade could not be loaded from {path}")
    return c


# A candidate whose box is at least this wide in the given image is verified by its eyes
# (below it, eyes are a few pixels and the eye cascades see none); the box is resized to
# VERIFY_SIDE pixels wide first, so the check costs the same at any photo size.
EYES_FROM = 48
VERIFY_SIDE = 120


def _has_eye(grey: np.ndarray, box: Box) -> bool:
    x, y, w, h = box
    upper = grey[y : y + h * 6 // 10, x : x + w]  # eyes sit in the upper half of a face
    if upper.size == 0:
        return False
    scale = VERIFY_SIDE / w
    size = (VERIFY_SIDE, max(1, round(upper.shape[0] * scale)))
    roi = cv2.resize(upper, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    for name in ("eye", "eye_tree_eyeglasses"):
        if len(_cascade(name).detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(12, 12), maxSize=(60, 60))):
            return True
    return False


def _found_again(small: np.ndarray, box: Box) -> bool:
    x, y, w, h = box
    pad = w // 4
    roi = small[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad]
    side = max(1, w * 2 // 3)
    return len(_cascade("frontalface_alt2").detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))) > 0


# Candidates before verification. Measured with the verification on (tests/test_faces.py):
# 5 keeps one more LFW face than 8 and adds no false face; 3 finds many more candidates
# for the verification to reject, for nothing.
MIN_NEIGHBORS = 5


def detect_faces(image: Image.Image, *, min_neighbors: int = MIN_NEIGHBORS, verify: bool = True) -> list[Box]:
    """Boxes (x, y, width, height) of frontal faces in ``image``, in its own pixels.

    Sorted left to right, top to bottom. ``min_neighbors`` trades misses for false
    detections (higher: fewer of both kinds of faces); ``verify=False`` keeps every
    candidate of the first cascade (see the module docstring).
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
        box = (x0, y0, x1 - x0, y1 - y0)
        if verify and not (_found_again(small, (int(x), int(y), int(bw), int(bh))) and (box[2] < EYES_FROM or _has_eye(grey, box))):
            continue
        boxes.append(box)
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
