"""How often the face detector is wrong, on real pictures that come in a package.

Face-free: every picture scikit-image ships except the two with people (astronaut,
camera), each whole, its top-left and bottom-right quarters, and enlarged 2x and 3x (the
cascade sees texture at another scale as another texture): 110 pictures of coins, cells,
bricks, grass, gravel, a cat, a horse, a rocket, the moon, stars, text. Faces: the
astronaut at five sizes, and the 100 faces of the LFW subset scikit-image ships (25x25
crops, enlarged to 100 px and set on a grey field); its 100 non-face crops as well.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from imgq.ops.faces import detect_faces  # noqa: E402

pytestmark = pytest.mark.slow  # about 15 s of detection on one core

BASE = os.path.dirname(skimage_data.__file__)
WITH_PEOPLE = {"astronaut.png", "camera.png"}


@functools.lru_cache(maxsize=1)
def face_free() -> dict[str, Image.Image]:
    out = {}
    for name in sorted(os.listdir(BASE)):
        if not name.endswith((".png", ".jpg")) or name in WITH_PEOPLE:
            continue
        with Image.open(os.path.join(BASE, name)) as im:
            im = im.convert("RGB")
        w, h = im.size
        out[name] = im
        if min(w, h) >= 256:
            out[f"{name} top-left"] = im.crop((0, 0, w // 2, h // 2))
            out[f"{name} bottom-right"] = im.crop((w // 2, h // 2, w, h))
        for k in (2, 3):
            out[f"{name} x{k}"] = im.resize((w * k, h * k), Image.Resampling.LANCZOS)
    return out


def lfw(faces: bool) -> list[Image.Image]:
    crops = np.load(os.path.join(BASE, "lfw_subset.npy"))  # 100 faces, then 100 non-faces
    out = []
    for a in crops[:100] if faces else crops[100:]:
        face = Image.fromarray((a * 255).astype(np.uint8)).resize((100, 100), Image.Resampling.LANCZOS)
        field = Image.new("L", (200, 200), 128)
        field.paste(face, (50, 50))
        out.append(field.convert("RGB"))
    return out


def test_at_most_one_picture_in_fifty_without_people_gets_a_face():
    pictures = face_free()
    assert len(pictures) >= 100
    wrong = {name: boxes for name, im in pictures.items() if (boxes := detect_faces(im))}
    # one in fifty is the bar; the verified detector finds none here (the first cascade
    # alone: 9 of 110, coins and cells mostly)
    assert len(wrong) <= len(pictures) // 50, wrong


def test_the_first_cascade_alone_is_fooled_by_texture():
    # what the verification is for: without it, the same pictures give false faces
    pictures = face_free()
    bar, fooled = len(pictures) // 50, 0
    for im in pictures.values():  # until the bar is passed: the rest would only add time
        fooled += bool(detect_faces(im, verify=False))
        if fooled > bar:
            break
    assert fooled > bar


@pytest.mark.parametrize("side", [256, 512, 1024, 2048, 3000])
def test_the_astronauts_one_face_is_found_at_every_size(side):
    im = Image.fromarray(skimage_data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    boxes = detect_faces(im)
    assert len(boxes) == 1
    x, y, w, h = (v / side for v in boxes[0])
    # her face: left of centre, in the upper third
    assert 0.3 < x + w / 2 < 0.5 and 0.2 < y + h / 2 < 0.4, boxes


def test_recall_on_lfw_faces_and_nothing_on_its_non_faces():
    found = sum(bool(detect_faces(im)) for im in lfw(faces=True))
    assert found >= 85, f"{found} of 100 LFW faces found"
    assert not any(detect_faces(im) for im in lfw(faces=False))
