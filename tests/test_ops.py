"""ops: the registry and each operation, on real images of every mode."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from imgq import ops
from imgq.errors import UnknownOperation
from imgq.ops import OPS, apply_steps, fit_size, parse_chain


def sample(mode: str, size=(240, 160)) -> Image.Image:
    """A gradient with an edge in ``mode`` (RGB, L, RGBA, LA, I;16)."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    grey = np.clip(255 * (0.3 * x + 0.4 * y + 0.3 * (x > 0.5)), 0, 255)
    if mode == "I;16":
        return Image.fromarray((grey * 257).astype(np.uint16))
    rgb = np.stack([grey, 255 - grey, np.broadcast_to(128 * x, grey.shape)], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize(
    "size, box, expected",
    [
        ((4000, 3000), (120, 90), (120, 90)),
        ((6000, 4000), (640, 480), (640, 427)),
        ((3000, 4000), (640, 480), (360, 480)),
        ((600, 800), (120, 90), (68, 90)),
        ((100, 80), (640, 480), (100, 80)),  # never enlarged
        ((100000, 10), (640, 480), (640, 1)),  # at least one pixel
        ((640, 480), (640, 480), (640, 480)),
    ],
)
def test_fit_size(size, box, expected):
    assert fit_size(size, box) == expected


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "I;16", "P", "1"])
def test_size_ops_keep_aspect_and_mode(mode):
    img = sample("RGB").convert(mode) if mode in ("P", "1") else sample(mode)
    for chain, size in [("thumb", (120, 80)), ("web", (240, 160)), ("fit:60x60", (60, 40))]:
        out = apply_steps(img, parse_chain(chain))
        assert out.size == size
        if mode not in ("P", "1"):
            assert out.mode == mode  # P and 1 are widened so Lanczos can work


def test_thumb_web_and_fit_agree():
    img = sample("RGB", (1200, 900))
    assert ops.get("thumb")(img).tobytes() == ops.get("fit")(img, size=(120, 90)).tobytes()
    assert ops.get("web")(img).tobytes() == ops.get("fit")(img, size=(640, 480)).tobytes()


def test_ops_do_not_modify_their_input():
    img = sample("RGB")
    before = img.tobytes()
    apply_steps(img, parse_chain("thumb"))
    assert img.tobytes() == before


def test_registry_lists_valid_names_and_every_op_is_documented():
    with pytest.raises(UnknownOperation, match="valid: .*thumb"):
        ops.get("thumbnail")
    for op in OPS.values():
        assert op.doc, f"{op.name} has no docstring"
        m = re.search(r"Example chain: ``([^`]+)``", op.doc)
        assert m, f"{op.name} has no example chain"
        steps = parse_chain(m.group(1))  # the example is valid
        assert op.name in [s.op for s in steps]
        for s in steps:
            # a halo in rows: a whole number, at most "the whole image" (a float or a
            # negative would cut stripes wrong)
            reach = ops.get(s.op).reach(s.params)
            assert type(reach) is int and 0 <= reach <= ops.WHOLE_IMAGE, (s, reach)


# ---- enhancement and filters -------------------------------------------------------------

MODES = ["RGB", "L", "RGBA", "LA", "I;16"]
FILTERS = [
    "brightness=1.3", "contrast=0.7", "sharpness=2", "blur:5", "gaussian=1.5", "median:5",
    "bilateral:9,50,50", "canny", "invert", "gray", "bw:100", "stretch:1", "equalize", "faces",
]
# the mode each operation returns for each input mode, where it is not the input's
RESULT_MODE = {
    "canny": dict.fromkeys(MODES, "L"),
    "gray": {"RGB": "L", "RGBA": "LA"},
    "bw": {"RGB": "L", "RGBA": "LA", "I;16": "L"},
    "faces": {"L": "RGB", "LA": "RGBA", "I;16": "RGB"},
}


def textured(mode: str, size=(160, 120), seed=0) -> Image.Image:
    """``sample`` plus noise and a few hard edges, so filters have something to do."""
    img = sample("RGB", size)
    rng = np.random.default_rng(seed)
    a = np.asarray(img, dtype=np.int16) + rng.integers(-40, 41, (size[1], size[0], 3))
    a[size[1] // 3 : size[1] // 2, 20:60] = (250, 10, 10)
    rgb = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + rng.integers(0, 200, (size[1], size[0])).astype(np.uint16))
    if mode in ("RGBA", "LA"):
        out = rgb.convert(mode)
        out.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))))
        return out
    return rgb.convert(mode)


@pytest.mark.parametrize("chain", FILTERS)
@pytest.mark.parametrize("mode", MODES)
def test_filters_keep_size_and_give_the_expected_mode(chain, mode):
    img = textured(mode)
    out = apply_steps(img, parse_chain(chain))
    assert out.size == img.size
    name = parse_chain(chain)[0].op
    assert out.mode == RESULT_MODE.get(name, {}).get(mode, mode)
    if mode in ("RGBA", "LA") and name in ("brightness", "contrast", "sharpness", "bilateral", "invert", "gray", "bw", "stretch", "equalize"):
        assert out.getchannel("A").tobytes() == img.getchannel("A").tobytes()  # alpha kept


@pytest.mark.parametrize("mode", MODES)
def test_point_operation_properties(mode):
    img = textured(mode)
    invert = ops.get("invert")
    assert invert(invert(img)).tobytes() == img.tobytes()
    for name in ("brightness", "contrast", "sharpness"):
        assert ops.get(name)(img, factor=1.0).tobytes() == img.tobytes()
    edges = np.asarray(ops.get("canny")(img))
    assert set(np.unique(edges)) <= {0, 255} and edges.max() == 255
    bw = np.asarray(ops.get("bw")(img).getchannel(0))
    assert set(np.unique(bw)) == {0, 255}
    black = np.asarray(ops.get("brightness")(img, factor=0.0))
    assert (black if black.ndim == 2 else black[..., : 1 if mode == "LA" else 3]).max() == 0


def test_gray_has_equal_channels_and_pillows_weights():
    img = textured("RGB")
    g = ops.get("gray")(img)
    rgb = np.asarray(g.convert("RGB"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.abs(np.asarray(g, dtype=int) - np.asarray(img.convert("L"), dtype=int)).max() <= 1


def test_stretch_spreads_a_dull_image_linearly_to_the_full_range():
    dull = Image.fromarray((100 + np.asarray(textured("L"), dtype=np.uint16) * 50 // 255).astype(np.uint8))
    lo, hi = dull.getextrema()
    assert hi - lo <= 51
    out = ops.get("stretch")(dull, cutoff=0.0)
    assert out.getextrema() == (0, 255)
    # linear: the order and the relative spacing of grey levels are kept
    a, b = np.asarray(dull, dtype=float).ravel(), np.asarray(out, dtype=float).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.999
    flat = Image.new("L", (10, 10), 77)
    assert ops.get("stretch")(flat).tobytes() == flat.tobytes()


def skewed(mode: str) -> Image.Image:
    """Mostly dark with a few bright pixels: a histogram a linear stretch cannot flatten."""
    rng = np.random.default_rng(3)
    grey = np.clip(rng.gamma(2.0, 12.0, size=(120, 160)), 0, 255)
    grey[:4, :4] = 250  # the brightest pixels pin a linear stretch's top
    if mode == "L":
        return Image.fromarray(grey.astype(np.uint8))
    tint = np.stack([grey, grey * 0.8, grey * 0.6], axis=-1)
    return Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8), "RGB")


def test_equalize_flattens_the_histogram_where_stretch_cannot():
    img = skewed("L")
    eq = np.asarray(ops.get("equalize")(img)).ravel()
    st = np.asarray(ops.get("stretch")(img, cutoff=0.0)).ravel()
    # equalised: each quarter of the grey range holds about a quarter of the pixels
    quarters = np.histogram(eq, bins=4, range=(0, 256))[0] / eq.size
    assert np.all(np.abs(quarters - 0.25) < 0.06), quarters
    # the stretch leaves most pixels in the dark quarter (its top is pinned by 16 pixels)
    assert np.histogram(st, bins=4, range=(0, 256))[0][0] / st.size > 0.6
    # monotonic: a darker pixel never becomes brighter than a lighter one
    src = np.asarray(img).ravel()
    order = np.argsort(src, kind="stable")
    assert np.all(np.diff(eq[order].astype(int)) >= 0)
    flat = Image.new("L", (10, 10), 77)
    assert ops.get("equalize")(flat).tobytes() == flat.tobytes()


def test_equalize_keeps_the_hue_of_a_colour_photo():
    img = skewed("RGB")
    out = np.asarray(ops.get("equalize")(img), dtype=float)
    src = np.asarray(img, dtype=float)
    bright = src[..., 0] > 40  # where the tint is measurable
    # red stays the strongest channel and blue the weakest, as in the tinted source
    assert (out[bright][:, 0] >= out[bright][:, 1]).mean() > 0.98
    assert (out[bright][:, 1] >= out[bright][:, 2]).mean() > 0.98


def test_the_old_equalize_parameter_points_to_stretch():
    from imgq.errors import UnknownOperation
    from imgq.ops.chain import parse_step

    with pytest.raises(UnknownOperation, match="stretch:1"):
        parse_step("equalize:1")


@pytest.mark.parametrize("name", ["brightness", "contrast", "sharpness"])
@pytest.mark.parametrize("factor", [0.0, 0.5, 1.3, 2.5])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_enhancement_matches_pillow_imageenhance(name, factor, mode):
    from PIL import ImageEnhance

    img = textured(mode)
    ours = np.asarray(ops.get(name)(img, factor=factor), dtype=int)
    pillows = np.asarray(getattr(ImageEnhance, name.capitalize())(img).enhance(factor), dtype=int)
    assert np.abs(ours - pillows).max() <= 1


def test_percent_scale_maps_50_to_unchanged():
    assert parse_chain("brightness=50%")[0].params["factor"] == 1.0
    assert parse_chain("contrast=0%")[0].params["factor"] == 0.0
    assert parse_chain("sharpness=100%")[0].params["factor"] == 2.0
    assert parse_chain("brightness=60%") == parse_chain("brightness=1.2")
    with pytest.raises(UnknownOperation, match="brightness"):
        parse_chain("brightness=-5%")


def test_bad_filter_parameters_are_refused():
    for text, words in [("blur:4", "must be odd"), ("median:1", "outside"), ("gaussian=0", "outside"), ("bw:300", "outside"), ("canny:x", "not a number")]:
        with pytest.raises(UnknownOperation, match=words):
            parse_chain(text)


# ---- splitting into stripes ----------------------------------------------------------------


def in_stripes(img: Image.Image, chain: str, rows: int = 23, halo: int | None = None) -> Image.Image:
    """``chain`` run on horizontal stripes of ``img``, each cut with ``halo`` extra rows
    above and below (the chain's reach unless told), and the stripes put back together."""
    steps = parse_chain(chain)
    halo = ops.chain_reach(steps) if halo is None else halo
    w, h = img.size
    out = None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, b = max(0, y0 - halo), min(h, y1 + halo)
        piece = apply_steps(img.crop((0, a, w, b)), steps)
        if out is None:
            out = Image.new(piece.mode, (w, h))
        out.paste(piece.crop((0, y0 - a, w, y1 - a)), (0, y0))
    return out


@pytest.mark.parametrize(
    "chain, modes",
    [
        ("blur:7", MODES),
        ("gaussian=2.3", MODES),
        ("median:5", MODES),
        ("median:9", ["RGB", "I;16"]),  # OpenCV for 8 bits, the exact fallback for 16
        ("bilateral:9,60,30", ["RGB", "L", "RGBA"]),
        ("bilateral:0,40,4", ["RGB"]),
        ("sharpness=1.8", MODES),
        ("brightness=1.4|invert|gray|bw:120", MODES),
        ("gaussian=1|sharpness=2|blur:3", ["RGB", "L"]),
        ("canny:50,150", ["RGB"]),  # reach = whole image: every stripe sees everything
    ],
)
def test_stripes_with_the_reach_as_halo_equal_the_whole_image(chain, modes):
    for mode in modes:
        img = textured(mode, (150, 131))
        whole = apply_steps(img, parse_chain(chain))
        assert in_stripes(img, chain).tobytes() == whole.tobytes(), (chain, mode)


def test_canny_is_not_local_hysteresis_reaches_across_stripes():
    # A vertical edge, strong (above "high") in its top rows and weak (between "low" and
    # "high") below: hysteresis keeps the weak part only because it touches the strong
    # part, so a stripe that cannot see the strong part loses its edge.
    a = np.zeros((200, 80), np.uint8)
    a[:, 40:] = 30  # Sobel magnitude 4 * 30 = 120: weak
    a[:40, 40:] = 60  # 240: strong
    img = Image.fromarray(a)
    whole = np.asarray(ops.get("canny")(img, low=100, high=200))
    assert whole[150].max() == 255  # the weak edge far below is kept in the whole image
    local = np.asarray(in_stripes(img, "canny:100,200", rows=50, halo=2))  # gradient + thinning only
    assert local[150].max() == 0  # ... and lost when split with a local halo
    assert ops.chain_reach(parse_chain("canny")) == ops.WHOLE_IMAGE


# ---- faces -------------------------------------------------------------------------------


def astronaut() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut())


@pytest.mark.slow  # camera-size decodes: seconds each
def test_detect_faces_finds_the_astronaut_at_any_size():
    img = astronaut()  # 512x512, Eileen Collins' face near (180-250, 60-140)
    boxes = ops.detect_faces(img)
    assert len(boxes) >= 1
    x, y, w, h = boxes[0]
    assert 150 < x + w / 2 < 260 and 50 < y + h / 2 < 150
    # on a camera-size copy the box is found on the downscale and mapped back
    for side in (1024, 2048, 3000):
        k = side / 512
        big = img.resize((side, side), Image.Resampling.BICUBIC)
        found = ops.detect_faces(big)
        assert len(found) == len(boxes), side
        bx, by, bw, bh = found[0]
        assert abs(bx + bw / 2 - k * (x + w / 2)) < 15 * k and abs(bw - k * w) < 15 * k, side


@pytest.mark.slow  # camera-size decodes: seconds each
def test_no_faces_in_a_landscape():
    from imgq import samples

    for seed in range(6):
        assert ops.detect_faces(samples.render(1600, 1200, seed=seed)) == [], seed
    assert ops.detect_faces(textured("RGB", (640, 480))) == []


def test_faces_op_draws_boxes_and_reports_them():
    img = astronaut()
    out, facts = ops.run_steps(img, parse_chain("faces"))
    assert facts["faces"] == ops.detect_faces(img)
    x, y, w, h = facts["faces"][0]
    assert out.getpixel((x, y + h // 2)) == (255, 64, 0)  # the box's left side


def test_render_reports_faces_in_the_artifact(tmp_path):
    from imgq.imaging import render

    p = tmp_path / "astronaut.jpg"
    astronaut().resize((2048, 2048)).save(p, quality=90)
    out = render(p, {"web": "web|faces", "thumb": "thumb"}, max_pixels=10**8)
    assert len(out["web"].facts["faces"]) >= 1 and out["thumb"].facts == {}


@pytest.mark.parametrize("mode", MODES)
def test_a_chain_converts_once_and_equals_step_by_step(mode):
    img = textured(mode)
    chain = "brightness=1.2|contrast=1.1|sharpness=1.5|gaussian=1|faces|invert|bw:90"
    one_by_one = img
    for step in parse_chain(chain):
        one_by_one = ops.get(step.op)(one_by_one, **step.params)
    assert apply_steps(img, parse_chain(chain)).tobytes() == one_by_one.tobytes()
    assert img.tobytes() == textured(mode).tobytes()  # the input is untouched
