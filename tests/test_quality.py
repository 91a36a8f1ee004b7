"""Output quality: what imgq renders is what a full-resolution decode and a Lanczos resize
would give, on pictures with fine detail and text.

imgq decodes JPEGs at a reduced DCT scale and resamples with its own Lanczos filter
(OpenCV); both are shortcuts, and this is where they must not show. Each output is
compared, as the pixels imgq encodes, with a reference made the slow, exact way: the
original decoded at full resolution, turned upright, resized with Pillow's LANCZOS to the
output's size. PSNR at least 35 dB everywhere (indistinguishable by eye). The pixels are
compared before JPEG encoding: quality 85 alone puts text 28-37 dB from any reference,
the same for every resampler, and would hide what is measured here.

The pictures: text of 12 output pixels and a grating of 4 output pixels' period drawn on
a sample scene, at camera sizes that decode at 1/8 and 1/4 of the stored size; a grainy
camera photo stored sideways with an ICC profile; scikit-image's astronaut and coffee at
their own size and enlarged to camera size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from imgq import imaging, samples
from imgq.imaging import Source

LIMIT = 500_000_000
MIN_PSNR = 35.0
CHAINS = {"thumb": "thumb", "web": "web"}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), np.float64)
    y = np.asarray(b.convert("RGB"), np.float64)
    assert x.shape == y.shape
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def text_photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A sample scene with lines of text 12 pixels high and a fine white grating (period
    4 pixels) once it is fitted in 640x480: the detail a web version must keep legible."""
    w, h = size
    img = samples.render(w // 8, h // 8, seed).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    scale = h / 480
    font = ImageFont.load_default(size=round(12 * scale))
    for y in range(round(12 * scale), h // 2, round(18 * scale)):
        draw.text((round(12 * scale), y), "Sphinx of black quartz, judge my vow. 0123456789", fill=(20, 20, 40), font=font)
    step = round(4 * scale)
    for x in range(w // 2, w - step, step):
        draw.line([(x, h // 2), (x, h - 1)], fill=(250, 250, 250), width=step // 2)
    img.save(path, quality=95)
    return path


def skimage_picture(path: Path, name: str, enlarge: int = 1) -> Path:
    data = pytest.importorskip("skimage.data")
    img = Image.fromarray(getattr(data, name)())
    if enlarge > 1:
        img = img.resize((img.width * enlarge, img.height * enlarge), Image.Resampling.LANCZOS)
    img.save(path, quality=95)
    return path


def reference(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as full:
        return ImageOps.exif_transpose(full).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def rendered(path: Path) -> dict[str, imaging.Rendered]:
    return imaging.render(Source(path.read_bytes(), str(path)), CHAINS, max_pixels=LIMIT)


@pytest.mark.slow  # camera-size decodes at full resolution for the references
@pytest.mark.parametrize("size", [(6000, 4000), (5472, 3648), (4000, 3000)])
def test_text_and_fine_lines_match_a_full_resolution_lanczos(tmp_path, size):
    p = text_photo(tmp_path / "text.jpg", size, seed=size[0])
    out = rendered(p)
    assert out["web"].source_size != size  # the reduced decode was used: that is what is tested
    for name, r in out.items():
        assert psnr(r.image, reference(p, r.image.size)) >= MIN_PSNR, name


@pytest.mark.slow  # camera-size decodes at full resolution for the references
def test_a_grainy_sideways_photo_with_a_profile_matches_and_keeps_both(tmp_path):
    p = samples.make_photo(tmp_path / "grain.jpg", width=5472, height=3648, seed=3, orientation=6, quality=95, icc=True)
    with Image.open(p) as im:
        icc = im.info["icc_profile"]
    out = rendered(p)
    for name, r in out.items():
        assert r.image.height > r.image.width  # upright: stored 5472x3648, held sideways
        assert samples.is_upright(r.image)
        assert psnr(r.image, reference(p, r.image.size)) >= MIN_PSNR, name
        saved = imaging.save(r, tmp_path / f"{name}.jpg")
        with Image.open(tmp_path / f"{name}.jpg") as o:
            assert o.info.get("icc_profile") == icc
            assert o.getexif().get(0x0112, 1) == 1  # pixels upright, no orientation left to apply
            assert o.size == (saved.width, saved.height) == r.image.size


@pytest.mark.slow  # camera-size decodes at full resolution for the references
@pytest.mark.parametrize("name, enlarge", [("astronaut", 1), ("coffee", 1), ("astronaut", 8), ("coffee", 8)])
def test_scikit_image_pictures_match_a_full_resolution_lanczos(tmp_path, name, enlarge):
    p = skimage_picture(tmp_path / f"{name}.jpg", name, enlarge)
    for out_name, r in rendered(p).items():
        assert psnr(r.image, reference(p, r.image.size)) >= MIN_PSNR, out_name


def test_fit_resamples_like_pillows_lanczos():
    """The fast resampler behind fit/thumb/web computes what Pillow's LANCZOS does, even
    on white noise with hard edges (the worst case for its cubic sampling)."""
    from imgq.ops import get

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    a[::7] = 255  # hard edges
    for mode in ("RGB", "L"):
        img = Image.fromarray(a).convert(mode)
        for size in [(120, 90), (266, 200), (250, 188), (333, 250), (399, 299), (7, 5), (400, 150)]:
            out = get("fit")(img, size=size)
            exact = img.resize(out.size, Image.Resampling.LANCZOS)
            assert out.mode == mode
            assert psnr(out, exact) >= MIN_PSNR, (mode, size)
