"""One huge image across workers: stripe jobs then a join, pixel-identical to the whole."""

import os
import sqlite3

import numpy as np
import pytest
from PIL import Image

from imgq import imaging, samples, split
from imgq.split import run as split_run


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


@pytest.mark.parametrize(
    "chain",
    ["blur=5", "gaussian=3", "median=5", "bilateral", "sharpness=1.8", "median=3|bilateral|brightness=1.1", "canny", "median=5|canny"],
)
def test_stripes_joined_equal_the_whole(tmp_path, chain):
    src = tmp_path / "big.jpg"
    samples.make_photo(src, width=640, height=500, orientation=6, seed=11)
    chains = {"out": chain}
    whole = imaging.render(src, chains, max_pixels=10**9)["out"].image
    halo = split.halo(chains)
    prefix, rest = split.divide(chain)
    count = 3
    for i in range(count):
        if prefix:
            [(name, part)] = split_run.render_stripe(src, {"out": prefix}, i, count, halo, max_pixels=10**9).items()
            split_run.save_part(part, tmp_path / f"p{i}.npy")

    def load(size):
        w, h = size
        return {"out": [split_run.load_part(tmp_path / f"p{s.index}.npy", w, s.y1 - s.y0) for s in split.plan(h, count, halo)]} if prefix else {}

    joined = split_run.render_join(src, load, {"out": rest} if prefix else {}, {} if prefix else chains, max_pixels=10**9)["out"].image
    assert joined.size == whole.size and joined.mode == whole.mode
    assert np.array_equal(np.asarray(joined), np.asarray(whole)), chain


def test_plan_covers_every_row_once():
    for height in (1, 7, 100, 4001):
        for count in (1, 2, 3, 8):
            stripes = split.plan(height, count, halo=5)
            rows = [y for s in stripes for y in range(s.y0, s.y1)]
            assert rows == list(range(height))
            assert all(s.top == max(0, s.y0 - 5) and s.bottom == min(height, s.y1 + 5) for s in stripes)


def test_divide_keeps_whole_image_steps_for_the_join():
    assert split.divide("median=5|web|gray") == ("median:5", "fit:640x480|gray")
    assert split.divide("web|median=5")[0] == ""
    assert split.worth_splitting({"a": "median=5"}) and not split.worth_splitting({"a": "gray|web"})


def test_split_through_the_cli_on_several_workers(tmp_path, run_imgq, db_path):
    src = tmp_path / "inbox" / "survey" / "orthophoto.jpg"
    samples.make_photo(src, width=1200, height=900, seed=12)
    small = tmp_path / "inbox" / "survey" / "small.jpg"
    samples.make_photo(small, width=300, height=200, seed=13)
    for p in (src, small):
        os.utime(p, (1e9, 1e9))
    ids = run_imgq("scan", tmp_path / "inbox").stdout.split()
    enq = run_imgq("enqueue", "--split", "--stripes", "3", "--split-pixels", "500000", "--op", "median=5|bilateral", "--op", "web", *ids)
    assert enq.returncode == 0, enq.stderr
    stages = sorted(s for (s,) in q(db_path, "SELECT stage FROM jobs"))
    assert stages == ["", "stripe:0/3", "stripe:1/3", "stripe:2/3"]  # the small photo is not split
    assert run_imgq("enqueue", "--split", "--stripes", "3", "--split-pixels", "500000", "--op", "median=5|bilateral", "--op", "web", *ids).stdout == ""
    work = run_imgq("work", "-j2")
    assert work.returncode == 0, work.stderr
    assert sorted(work.stdout.split()) == sorted(ids)
    # the stripes ran as separate jobs, then a join
    assert q(db_path, "SELECT count(*) FROM jobs WHERE stage LIKE 'join:%' AND state = 'done'") == [(1,)]
    store = tmp_path / "imgq-store"
    assert not list(store.rglob("*.npy")), "stripes are removed once joined"
    [file_id] = [i for i in ids if "orthophoto" in i]
    outs = dict(q(db_path, "SELECT name, path FROM artifacts WHERE file_id = ?", file_id))
    assert set(outs) == {"median5-bilateral", "web"} or len(outs) == 2
    whole = imaging.render(src, {"x": "median=5|bilateral"}, max_pixels=10**9)["x"]
    imaging.save(whole, tmp_path / "whole.jpg")
    name = [n for n in outs if n != "web"][0]
    with Image.open(store / outs[name]) as a, Image.open(tmp_path / "whole.jpg") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
