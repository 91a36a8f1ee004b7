"""The pictures: photo-like scenes rendered with numpy and Pillow, and the "up" marker.

Every picture carries an "up" marker: in its upright form the top band is near-white and
the bottom band near-black (see ``is_upright``). Imports numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# The share of the upright picture's height taken by the bright top band and the dark
# bottom band: the "up" marker.
TOP_BAND = 0.08
BOTTOM_BAND = 0.05
TOP_COLOUR = (246, 246, 240)
BOTTOM_COLOUR = (22, 20, 18)


def _grain_tile(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A square RGB tile of zero-centred grain (offset by 128): fine sensor-like noise,
    mostly luminance, plus a medium-scale mottle like foliage or fabric."""
    fine_luma = rng.normal(0.0, 7.0, (size, size, 1))
    fine_chroma = rng.normal(0.0, 2.5, (size, size, 3))
    coarse = rng.normal(0.0, 9.0, (size // 4, size // 4, 1)).astype(np.float32)
    coarse_img = Image.fromarray(np.clip(coarse[:, :, 0] + 128, 0, 255).astype(np.uint8))
    coarse_up = np.asarray(coarse_img.resize((size, size), Image.Resampling.BILINEAR), np.float32) - 128
    grain = fine_luma + fine_chroma + coarse_up[:, :, None]
    return np.clip(grain + 128.0, 0, 255).astype(np.uint8)


def _smooth_scene(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Sky, horizon, ground and soft blobs at 1/16 scale, upscaled: the low frequencies."""
    lw, lh = max(8, width // 16), max(8, height // 16)
    y = np.linspace(0.0, 1.0, lh, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, lw, dtype=np.float32)[None, :, None]
    horizon = rng.uniform(0.4, 0.6)
    sky_top = rng.uniform([40, 90, 160], [110, 150, 230]).astype(np.float32)
    sky_low = rng.uniform([170, 180, 190], [240, 220, 210]).astype(np.float32)
    ground_near = rng.uniform([30, 50, 20], [90, 110, 60]).astype(np.float32)
    ground_far = rng.uniform([80, 100, 60], [150, 150, 110]).astype(np.float32)
    t_sky = np.clip(y / horizon, 0, 1)
    t_ground = np.clip((y - horizon) / (1 - horizon), 0, 1)
    sky = sky_top * (1 - t_sky) + sky_low * t_sky
    ground = ground_far * (1 - t_ground) + ground_near * t_ground
    scene = np.where(y < horizon, sky, ground) + 0 * x
    # Soft blobs of colour: hills, clouds, out-of-focus things.
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.15, 1.0)
        r = rng.uniform(0.05, 0.3)
        colour = rng.uniform(-60, 60, 3).astype(np.float32)
        weight = np.exp(-(((x - cx) ** 2) + ((y - cy) * height / width) ** 2) / (2 * r * r))
        scene = scene + weight * colour
    small = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")
    return small.resize((width, height), Image.Resampling.BILINEAR)


def _draw_shapes(img: Image.Image, rng: np.random.Generator) -> None:
    """Hard-edged shapes (buildings, trees, a sun) in the middle of the frame."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    top, bottom = int(h * (TOP_BAND + 0.04)), int(h * (1 - BOTTOM_BAND - 0.02))
    span = max(1, bottom - top)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(20, 235, 3))

    # A row of "buildings" standing on the horizon.
    base = top + int(span * rng.uniform(0.45, 0.7))
    x = int(rng.integers(0, max(1, w // 10)))
    while x < w:
        bw = int(w * rng.uniform(0.04, 0.12))
        bh = int(span * rng.uniform(0.1, 0.4))
        draw.rectangle([x, max(top, base - bh), x + bw, base], fill=colour())
        # Windows: small rectangles give the encoder some edges to chew on.
        step = max(4, bw // 5)
        for wx in range(x + step // 2, x + bw - step // 2, step):
            for wy in range(max(top, base - bh) + step // 2, base - step, step * 2):
                draw.rectangle([wx, wy, wx + step // 3, wy + step // 2], fill=colour())
        x += bw + int(w * rng.uniform(0.0, 0.05))
    # Trees and stones in front.
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = int(rng.uniform(0, w)), int(base + rng.uniform(0, 1) * (bottom - base))
        r = int(min(w, h) * rng.uniform(0.03, 0.12))
        draw.ellipse([cx - r, max(top, cy - 2 * r), cx + r, min(bottom, cy)], fill=colour())
    # Mountains behind, as polygons.
    for _ in range(int(rng.integers(1, 3))):
        x0 = rng.uniform(-0.2, 0.8) * w
        peak = (x0 + rng.uniform(0.1, 0.3) * w, top + span * rng.uniform(0.0, 0.3))
        draw.polygon([(x0, base), peak, (x0 + rng.uniform(0.3, 0.6) * w, base)], fill=colour())
    # A sun, below the top band.
    r = int(min(w, h) * 0.04)
    sx, sy = int(rng.uniform(0.1, 0.9) * w), top + r + 1
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 236, 160))


def render(width: int, height: int, seed: int = 0) -> Image.Image:
    """An upright, photo-like RGB picture of ``width`` x ``height``, the same for the same seed.

    The top ``TOP_BAND`` of the height is near-white and the bottom ``BOTTOM_BAND`` near-black.
    """
    if width < 16 or height < 16:
        raise ValueError(f"sample pictures must be at least 16x16, not {width}x{height}")
    rng = np.random.default_rng(seed)
    img = _smooth_scene(width, height, rng)
    _draw_shapes(img, rng)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, max(1, int(height * TOP_BAND)) - 1], fill=TOP_COLOUR)
    draw.rectangle([0, height - max(1, int(height * BOTTOM_BAND)), width, height], fill=BOTTOM_COLOUR)
    tile = _grain_tile(rng)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    grain = np.tile(tile, reps)[:height, :width]
    return ImageChops.add(img, Image.fromarray(grain, "RGB"), scale=1.0, offset=-128)


def is_upright(img: Image.Image) -> bool:
    """Whether a picture made here is shown the right way up (bright band on top, dark at
    the bottom), after whatever transposition the caller applied. Works on thumbnails."""
    gray = img.convert("L")
    w, h = gray.size
    top_rows = max(1, int(h * TOP_BAND * 0.6))
    bottom_rows = max(1, int(h * BOTTOM_BAND * 0.6))
    a = np.asarray(gray, dtype=np.float32)
    top, bottom = a[:top_rows].mean(), a[h - bottom_rows:].mean()
    left = a[:, : max(1, w // 20)].mean()
    right = a[:, w - max(1, w // 20):].mean()
    return top > 190 and bottom < 80 and top > left + 30 and top > right + 30
