"""imgq export: a recipe's artifacts in a folder the user chose, under human names."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest

from imgq import samples


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(root):
    """path -> (size, mtime_ns, sha256) of every file below root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, sha(p)) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def processed(tmp_path, run_imgq):
    """Two photographers' photos scanned and worked with the default recipe; one of
    them also with an ad-hoc --op chain."""
    inbox = tmp_path / "inbox"
    samples.make_photo(inbox / "alice" / "IMG_0001.jpg", seed=1, width=640, height=480)
    samples.make_photo(inbox / "bob" / "IMG_0001.jpg", seed=2, width=640, height=480)
    samples.make_photo(inbox / "bob" / "late.jpg", seed=3, width=640, height=480)
    ids = ok(run_imgq("scan", "--settle", "0", inbox)).stdout.split()
    ok(run_imgq("enqueue", *ids))
    ok(run_imgq("enqueue", "--op", "web|sharpness=2", ids[0]))
    ok(run_imgq("work", "--drain", "-j1"))
    return inbox, ids


def test_export_writes_each_artifact_under_a_human_name_and_checks_it(tmp_path, run_imgq, db_path, processed):
    inbox, ids = processed
    before = tree(inbox)
    out = tmp_path / "out"
    r = ok(run_imgq("export", "--recipe", "default", "--to", out))
    written = sorted(os.path.relpath(p, out) for p in r.stdout.split())
    day = sqlite3.connect(db_path).execute("SELECT substr(taken_at, 1, 10) FROM files LIMIT 1").fetchone()[0]
    assert written == sorted(
        f"{owner}/{day}/{stem}.{art}.jpg" for owner, stem in (("alice", "IMG_0001"), ("bob", "IMG_0001"), ("bob", "late")) for art in ("thumb", "web")
    )
    conn = sqlite3.connect(db_path)
    store = tmp_path / "imgq-store"
    for path, digest in conn.execute("SELECT a.path, a.sha256 FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE j.recipe = 'default'"):
        assert digest in {sha(out / w) for w in written}
        assert sha(store / path) == digest
    assert tree(inbox) == before, "originals are never touched"


def test_export_again_writes_nothing_and_keeps_mtimes(tmp_path, run_imgq, processed):
    out = tmp_path / "out"
    ok(run_imgq("export", "-r", "default", "--to", out))
    first = tree(out)
    again = ok(run_imgq("export", "-v", "-r", "default", "--to", out))
    assert again.stdout == "" and "0 written, 6 unchanged" in again.stderr
    statuses = [json.loads(line)["status"] for line in ok(run_imgq("export", "--json", "-r", "default", "--to", out)).stdout.splitlines()]
    assert statuses == ["unchanged"] * 6
    assert tree(out) == first


def test_dry_run_names_what_a_real_export_writes_and_writes_nothing(tmp_path, run_imgq, db_path, processed):
    out = tmp_path / "out"
    db_before = sha(db_path)
    dry = ok(run_imgq("export", "-n", "-r", "default", "--to", out))
    assert not out.exists() and sha(db_path) == db_before
    assert "dry run: nothing changed" in dry.stderr
    real = ok(run_imgq("export", "-r", "default", "--to", out))
    assert dry.stdout == real.stdout and real.stdout.count("\n") == 6


def test_op_chain_template_and_ids_from_stdin(tmp_path, run_imgq, processed):
    _, ids = processed
    out = tmp_path / "out"
    r = ok(run_imgq("export", "--op", "web|sharpness=2", "--to", out, "--name", "{id}{ext}"))
    assert [os.path.relpath(p, out) for p in r.stdout.split()] == [f"{ids[0]}.jpg"]
    r = ok(run_imgq("export", "-r", "default", "--to", tmp_path / "some", "--name", "{stem}-{artifact}{ext}", "-", input=ids[2] + "\n"))
    assert sorted(os.path.basename(p) for p in r.stdout.split()) == ["late-thumb.jpg", "late-web.jpg"]


def test_two_photos_with_one_human_name_both_arrive(tmp_path, run_imgq, processed):
    out = tmp_path / "out"
    r = ok(run_imgq("export", "-r", "default", "--to", out, "--name", "{stem}.{artifact}{ext}"))
    names = sorted(os.path.basename(p) for p in r.stdout.split())
    assert len(names) == 6 and len(set(names)) == 6  # alice's and bob's IMG_0001 do not collide
    assert len(list(out.iterdir())) == 6 + 1  # and the record of what export wrote


def test_a_file_export_did_not_write_is_never_overwritten(tmp_path, run_imgq, processed):
    out = tmp_path / "out"
    mine = out / "late.web.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"someone's own file")
    r = run_imgq("export", "-r", "default", "--to", out, "--name", "{stem}.{artifact}{ext}")
    assert r.returncode == 1
    assert mine.read_bytes() == b"someone's own file"
    assert "exists and export did not write it" in r.stderr and str(mine) in r.stderr
    assert len(r.stdout.split()) == 5  # the others are exported


def test_a_changed_recipe_replaces_what_export_wrote_before(tmp_path, run_imgq, processed):
    _, ids = processed
    out = tmp_path / "out"
    ok(run_imgq("export", "-r", "default", "--to", out, "--name", "{id}.{artifact}{ext}", ids[2]))
    (tmp_path / "imgq.toml").write_text('[recipes.default]\nthumb = "thumb"\nweb = "fit:320x240"\n')
    ok(run_imgq("enqueue", ids[2]))
    ok(run_imgq("work", "--drain", "-j1"))
    r = ok(run_imgq("export", "-r", "default", "--to", out, "--name", "{id}.{artifact}{ext}", ids[2]))
    assert f"{ids[2]}.web.jpg" in [os.path.basename(p) for p in r.stdout.split()]  # replaced: export wrote it
    conn = sqlite3.connect(tmp_path / "imgq.db")
    [(new_web,)] = conn.execute(
        "SELECT a.sha256 FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE a.file_id = ? AND a.name = 'web' ORDER BY j.id DESC LIMIT 1", (ids[2],)
    ).fetchall()
    assert sha(out / f"{ids[2]}.web.jpg") == new_web


def test_not_processed_yet_is_said_and_bad_templates_are_usage_errors(tmp_path, run_imgq, processed):
    out = tmp_path / "out"
    r = run_imgq("export", "-r", "default", "--to", out, "--name", "{nosuch}")
    assert r.returncode == 2 and "{nosuch}" in r.stderr and "{owner}" in r.stderr
    r = run_imgq("export", "-r", "default", "--to", out, "--name", "fixed.jpg")
    assert r.returncode == 2 and "names no field" in r.stderr
    r = run_imgq("export", "-r", "default")
    assert r.returncode == 2 and "--to" in r.stderr
    r = run_imgq("export", "--to", out)
    assert r.returncode == 2
    r = ok(run_imgq("export", "--op", "gray", "--to", out))
    assert r.stdout == "" and "3 file(s) not processed" in r.stderr
