"""imgq enqueue --where: follow-up work on the files a first pass marked."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pytest

from imgq import samples
from imgq.errors import UsageError
from imgq.select import parse
from test_faces import make_face_inbox


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def jobs_of(db, recipe):
    conn = sqlite3.connect(db)
    try:
        return sorted(r[0] for r in conn.execute("SELECT file_id FROM jobs WHERE recipe = ?", (recipe,)))
    finally:
        conn.close()


def test_a_second_recipe_runs_only_on_the_photos_the_first_found_faces_in(tmp_path, run_imgq, db_path):
    ids = make_face_inbox(tmp_path / "inbox")
    (tmp_path / "imgq.toml").write_text(
        'settle = 0\n[recipes.scan_faces]\nweb = "web|faces"\n[recipes.portraits]\nportrait = "fit:400x400|sharpness=1.5"\n'
    )
    ok(run_imgq("scan", tmp_path / "inbox"))
    ok(run_imgq("enqueue", "-r", "scan_faces"))
    ok(run_imgq("work", "--drain", "-j1"))
    r = ok(run_imgq("enqueue", "-r", "portraits", "--where", "faces>0"))
    assert r.stdout.split() == [ids["face"]]
    assert jobs_of(db_path, "portraits") == [ids["face"]]
    r = ok(run_imgq("enqueue", "--op", "gray", "--where", "faces=0", "--where", "recipe=scan_faces"))
    assert r.stdout.split() == [ids["land"]]


def test_owner_taken_state_tag_and_recipe_conditions(tmp_path, run_imgq, db_path):
    inbox = tmp_path / "inbox"
    samples.make_photo(inbox / "alice" / "may.jpg", seed=1, width=320, height=240, taken=datetime(2024, 5, 17, 8, 0))
    samples.make_photo(inbox / "alice" / "june.jpg", seed=2, width=320, height=240, taken=datetime(2024, 6, 2, 9, 0))
    samples.make_photo(inbox / "Zoë" / "may.jpg", seed=3, width=320, height=240, taken=datetime(2024, 5, 20, 10, 0))
    ids = {line.rsplit("_", 1)[-1] + ":" + line.split("_")[0]: line for line in ok(run_imgq("scan", "--settle", "0", inbox)).stdout.split()}
    by = lambda owner, name: ids[f"{name}:{owner}"]  # noqa: E731

    def picked(*conds):
        r = ok(run_imgq("enqueue", "-n", "--op", "gray", *[a for c in conds for a in ("--where", c)]))
        return sorted(r.stdout.split())

    assert picked("owner=alice") == sorted([by("alice", "may.jpg"), by("alice", "june.jpg")])
    assert picked("owner=Zoe\u0308") == [by("Zoë", "may.jpg")]  # NFD spelled, NFC stored
    assert picked("taken>=2024-05-18", "taken<2024-06-01") == [by("Zoë", "may.jpg")]
    assert picked("taken=2024-05") == sorted([by("alice", "may.jpg"), by("Zoë", "may.jpg")])
    assert picked("taken<=2024-05-17") == [by("alice", "may.jpg")]  # the whole of the 17th
    assert picked("state=seen", "owner!=alice") == [by("Zoë", "may.jpg")]
    ok(run_imgq("enqueue", by("alice", "june.jpg")))
    ok(run_imgq("work", "--drain", "-j1"))
    assert picked("recipe=default") == [by("alice", "june.jpg")]
    assert picked("recipe!=default", "owner=alice") == [by("alice", "may.jpg")]
    assert picked("tag=no_faces") == []
    assert picked("owner=x' OR '1'='1") == []  # a value is a value, never SQL
    # ids given and --where: the files among them that meet it
    r = ok(run_imgq("enqueue", "-n", "--op", "gray", "--where", "owner=alice", by("Zoë", "may.jpg"), by("alice", "may.jpg")))
    assert r.stdout.split() == [by("alice", "may.jpg")]


@pytest.mark.parametrize("text", ["nosuch=1", "state=nosuch", "owner>b", "faces>many", "taken>=May", "state", "tag="])
def test_a_bad_condition_is_a_usage_error_naming_it(text):
    with pytest.raises(UsageError, match="--where"):
        parse(text)


def test_a_bad_condition_exits_2_on_the_command_line(tmp_path, run_imgq):
    r = run_imgq("enqueue", "--where", "colour=red")
    assert r.returncode == 2 and "colour" in r.stderr and "fields:" in r.stderr
