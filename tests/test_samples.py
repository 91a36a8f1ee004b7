"""The sample generator makes what the other tests rely on: real JPEGs with real EXIF,
pictures that know which way is up, other formats, broken files, and whole inboxes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from imgq import samples

def _env() -> dict[str, str]:
    """Our environment with this checkout importable, installed or not."""
    repo = str(Path(samples.__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}


EXIF_IFD, DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x8769, 0x9003, 0x9011


def test_photo_is_a_jpeg_with_camera_exif(tmp_path):
    taken = datetime(2024, 5, 17, 14, 3, 9)
    path = samples.make_photo(tmp_path / "a.jpg", width=800, height=600, taken=taken,
                              make="Acme", model="Z 9", orientation=1)
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (800, 600) and im.mode == "RGB"
        exif = im.getexif()
        assert exif[0x010F] == "Acme" and exif[0x0110] == "Z 9" and exif[0x0112] == 1
        assert exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] == "2024:05:17 14:03:09"
        im.load()


def test_timezone_aware_capture_time_records_its_offset(tmp_path):
    taken = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))
    with Image.open(samples.make_photo(tmp_path / "tz.jpg", width=64, height=48, taken=taken)) as im:
        ifd = im.getexif().get_ifd(EXIF_IFD)
    assert ifd[DATETIME_ORIGINAL] == "2024:01:02 03:04:05"
    assert ifd[OFFSET_TIME_ORIGINAL] == "-05:30"


def test_photo_without_capture_date_has_no_datetime_original(tmp_path):
    with Image.open(samples.make_photo(tmp_path / "n.jpg", width=64, height=48)) as im:
        assert DATETIME_ORIGINAL not in im.getexif().get_ifd(EXIF_IFD)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_applying_the_orientation_shows_the_picture_upright(tmp_path, orientation):
    path = samples.make_photo(tmp_path / "o.jpg", width=320, height=240, orientation=orientation, seed=orientation)
    with Image.open(path) as im:
        assert im.size == (320, 240), "width x height are the stored (sensor) dimensions"
        upright = ImageOps.exif_transpose(im)
        assert samples.is_upright(upright)
        assert upright.size == ((240, 320) if orientation >= 5 else (320, 240))
        if orientation in (3, 4, 5, 6, 7, 8):
            assert not samples.is_upright(im), "stored pixels must need the orientation applied"


def test_uprightness_survives_a_thumbnail(tmp_path):
    path = samples.make_photo(tmp_path / "r.jpg", width=1600, height=1200, orientation=6)
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((120, 90))
    assert samples.is_upright(im)


def test_photos_are_as_heavy_as_real_ones(tmp_path):
    # A camera JPEG at quality 90 carries roughly 0.2-0.5 bytes a pixel; a flat synthetic
    # picture would be ten times smaller and decode unrealistically fast.
    path = samples.make_photo(tmp_path / "big.jpg", width=2400, height=1600, quality=90)
    assert 0.2 < path.stat().st_size / (2400 * 1600) < 0.8


def test_same_seed_same_bytes_other_seed_other_picture(tmp_path):
    a = samples.make_photo(tmp_path / "a.jpg", width=200, height=150, seed=5).read_bytes()
    b = samples.make_photo(tmp_path / "b.jpg", width=200, height=150, seed=5).read_bytes()
    c = samples.make_photo(tmp_path / "c.jpg", width=200, height=150, seed=6).read_bytes()
    assert a == b and a != c


def test_progressive_and_icc(tmp_path):
    path = samples.make_photo(tmp_path / "p.jpg", width=320, height=240, progressive=True, icc=True)
    with Image.open(path) as im:
        assert im.info.get("progressive") or im.info.get("progression")
        assert im.info.get("icc_profile")


@pytest.mark.parametrize(
    "maker, kwargs, fmt, mode",
    [
        (samples.make_png, {}, "PNG", "RGB"),
        (samples.make_png16, {}, "PNG", "RGB"),
        (samples.make_png16, {"color": False}, "PNG", "I;16"),
        (samples.make_grayscale_jpeg, {}, "JPEG", "L"),
        (samples.make_palette_png, {}, "PNG", "P"),
        (samples.make_rgba_png, {}, "PNG", "RGBA"),
        (samples.make_tiff, {}, "TIFF", "RGB"),
        (samples.make_webp, {}, "WEBP", "RGB"),
        (samples.make_bmp, {}, "BMP", "RGB"),
        (samples.make_gif, {"frames": 2}, "GIF", "P"),
        (samples.make_cmyk_jpeg, {}, "JPEG", "CMYK"),
    ],
)
def test_other_formats_decode(tmp_path, maker, kwargs, fmt, mode):
    path = maker(tmp_path / "img", width=160, height=120, **kwargs)
    with Image.open(path) as im:
        assert (im.format, im.mode, im.size) == (fmt, mode, (160, 120))
        im.load()


def test_png16_really_has_sixteen_bits(tmp_path):
    data = samples.make_png16(tmp_path / "16.png", width=32, height=16).read_bytes()
    assert data[24] == 16 and data[25] == 2  # IHDR bit depth and colour type (RGB)


@pytest.mark.parametrize(
    "maker",
    [samples.make_truncated_jpeg, samples.make_zero_byte, samples.make_text_as_jpg, samples.make_random_png],
)
def test_broken_inputs_do_not_decode(tmp_path, maker):
    path = maker(tmp_path / "broken.jpg")
    with pytest.raises(OSError):  # UnidentifiedImageError is an OSError too
        with Image.open(path) as im:
            im.load()


def test_truncated_jpeg_and_random_png_still_look_like_images(tmp_path):
    assert samples.make_truncated_jpeg(tmp_path / "t.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert samples.make_random_png(tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_decompression_bomb_is_small_and_declares_a_huge_size(tmp_path, kind):
    path = samples.make_decompression_bomb(tmp_path / f"bomb.{kind}", kind=kind)
    assert path.stat().st_size < 10_000
    # imgq turns Pillow's own process-wide bomb check off (imgq.imaging.formats checks the
    # header itself), so read the declared size and hold it against Pillow's default limit
    pillow_default = int(1024 * 1024 * 1024 // 4 // 3)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            assert im.size == (40000, 40000)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert 40000 * 40000 > 2 * pillow_default  # what Pillow, left alone, refuses as a bomb


def test_inbox_has_owners_extras_and_settled_files(tmp_path):
    info = samples.make_inbox(tmp_path / "in", per_owner=2, size=(320, 240))
    root = info["root"]
    assert os.fspath(info) == str(root) and info / "alice" == root / "alice"
    assert info["owners"] == ["alice", "bob", "carol"]
    for owner in info["owners"]:
        assert (root / owner).is_dir()
    # Camera names repeat across owners.
    assert (root / "alice" / "IMG_0001.jpg").exists() and (root / "bob" / "IMG_0001.jpg").exists()
    assert info["loose"] and info["loose"][0].parent == root
    assert info["taken"][info["loose"][0]] is None

    with Image.open(info["rotated"]) as im:
        assert im.getexif()[0x0112] == 6
        assert samples.is_upright(ImageOps.exif_transpose(im)) and not samples.is_upright(im)

    dup = info["duplicate"]
    assert dup["original"].read_bytes() == dup["copy"].read_bytes()
    assert dup["original"].parent.name != dup["copy"].parent.name
    assert dup["copy"] in info["photos"] and dup["copy"] not in info["unique"]
    assert len({info["sha256"][p] for p in info["unique"]}) == len(info["unique"])

    for p in info["photos"]:
        with Image.open(p) as im:
            im.load()
    for p in info["broken"]:
        with pytest.raises(OSError), Image.open(p) as im:
            im.load()

    now = time.time()
    for p in info["files"]:
        assert now - p.stat().st_mtime > 30, f"{p} would not pass a settle check"
        assert info["sha256"][p] == hashlib.sha256(p.read_bytes()).hexdigest()
    on_disk = sorted(p for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(info["files"])


def test_inbox_hostile_names_and_junk(tmp_path):
    info = samples.make_inbox(tmp_path / "in", per_owner=1, size=(160, 120), with_rotated=False,
                              with_duplicate=False, with_broken=False, with_hostile_names=True,
                              with_junk=True)
    names = {p.name for p in info["hostile"]}
    assert "$(touch x).jpg" in names and "Ängström ✓.jpg" in names and "-leading-dash.jpg" in names
    assert any(" " in n for n in names) and any(";" in n for n in names) and any('"' in n for n in names)
    assert (info["root"] / samples.HOSTILE_OWNER).is_dir()
    assert all(p.exists() for p in info["hostile"] + info["junk"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "in" / "x").exists()
    assert info["rotated"] is None and info["duplicate"] is None and info["broken"] == []


def test_inbox_count_spreads_photos_over_owners(tmp_path):
    info = samples.make_inbox(tmp_path / "in", count=7, size=(64, 48), with_loose=False,
                              with_rotated=False, with_duplicate=False, with_broken=False)
    assert [len(info["by_owner"][o]) for o in info["owners"]] == [3, 2, 2]
    assert len(info["photos"]) == 7


def test_command_line_generates_an_inbox(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "imgq.samples", str(tmp_path / "in"), "--count", "3", "--size", "96x64",
         "--owners", "ann,ben", "--json", "-j", "1"],
        capture_output=True, text=True, check=True, env=_env(),
    )
    info = json.loads(out.stdout)
    assert sorted(info["by_owner"]) == ["ann", "ben"]
    assert "imgq.samples:" in out.stderr
    with Image.open(info["by_owner"]["ann"][0]) as im:
        assert im.size == (96, 64)


def test_command_line_rejects_a_bad_size(tmp_path):
    out = subprocess.run([sys.executable, "-m", "imgq.samples", str(tmp_path), "--size", "big"],
                         capture_output=True, text=True, env=_env())
    assert out.returncode == 2 and "WxH" not in out.stdout and "size" in out.stderr


def test_fixtures(inbox, photo, db_path, tmp_path):
    assert inbox.root == tmp_path / "inbox" and len(inbox["by_owner"]["alice"]) == 3
    a, b = photo("a.jpg"), photo("b.jpg", orientation=6)
    assert a.read_bytes() != b.read_bytes() and a.parent == tmp_path / "photos"
    assert db_path == tmp_path / "imgq.db" and not db_path.exists()
