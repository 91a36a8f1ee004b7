"""Recipes through the command line: `imgq recipes`, editing a recipe re-enqueues only its
jobs, `--op` chains end to end, and a missing optional extra named without a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from imgq import ops, recipes, samples

OLD = 1_000_000_000


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def small_inbox(root, n=3):
    for i in range(n):
        p = samples.make_photo(root / "alice" / f"IMG_{i}.jpg", width=800, height=600, seed=40 + i)
        os.utime(p, (OLD, OLD))
    return root


CONFIG = """
enqueue = ["default", "mono", "soft"]

[recipes.mono]
web = "web|gray"

[recipes.soft]
web = "web|gaussian=1.5"
"""


def test_recipes_lists_canonical_chains_and_hashes(tmp_path, run_imgq):
    (tmp_path / "imgq.toml").write_text(CONFIG + '\n[recipes.people]\nweb = "web | faces"\non_no_faces = "tag"\n')
    r = run_imgq("recipes", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert list(rows) == ["default", "gallery", "mono", "soft", "people"]
    assert rows["default"]["source"] == "built-in" and rows["default"]["chains"] == {"thumb": "fit:120x90", "web": "fit:640x480"}
    # the sizes a published gallery chooses from; imgq publish enqueues it, enqueue does not
    assert rows["gallery"]["source"] == "built-in" and rows["gallery"]["chains"]["gallery1920"] == "fit:1920x1920"
    assert not rows["gallery"]["enqueued_by_default"]
    assert rows["people"]["chains"] == {"web": "fit:640x480|faces:0"} and rows["people"]["options"] == {"on_no_faces": "tag"}
    assert rows["people"]["source"] == "imgq.toml" and not rows["people"]["enqueued_by_default"]
    for name, row in rows.items():
        assert row["spec_hash"] == recipes.spec_hash(row["given"]) and row["error"] is None
    text = run_imgq("recipes", "people").stdout.splitlines()
    assert text[0].startswith(f"people  {rows['people']['spec_hash']}  (imgq.toml)")
    assert [ln.split() for ln in text[1:]] == [["web", "fit:640x480|faces:0"], ["on_no_faces", "tag"]]

    # a recipe that does not parse is shown with its reason; the listing exits 1
    (tmp_path / "imgq.toml").write_text('[recipes.bad]\nweb = "web|sparkle"\n')
    bad = run_imgq("recipes")
    assert bad.returncode == 1 and "recipe 'bad'" in bad.stderr and "sparkle" in bad.stderr and "Traceback" not in bad.stderr
    assert "bad  INVALID" in bad.stdout and "default  " in bad.stdout
    assert run_imgq("recipes", "nope").returncode == 2


def test_recipes_ops_documents_every_operation_from_the_registry(run_imgq):
    r = run_imgq("recipes", "--ops", "--json")
    assert r.returncode == 0, r.stderr
    table = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["name"] for o in table] == sorted(ops.OPS)
    for o in table:
        assert o["summary"] and o["example"]
        ops.parse_chain(o["example"])  # every example is a working chain
        assert [p["name"] for p in o["params"]] == [p.name for p in ops.get(o["name"]).params]
    text = run_imgq("recipes", "--ops", "brightness", "fit").stdout
    assert text.startswith("brightness:FACTOR  -  Scale every channel by factor")
    assert "50% = 1.0 (default 1)" in text and "example: imgq enqueue --op 'web|brightness=1.2'" in text
    assert "size: the box WxH to fit within (required)" in text
    assert run_imgq("recipes", "--ops", "sparkle").returncode == 2


def test_changing_one_recipe_reenqueues_only_its_jobs(tmp_path, run_imgq, db_path):
    small_inbox(tmp_path / "inbox")
    config = tmp_path / "imgq.toml"
    config.write_text(CONFIG)
    ids = run_imgq("scan", tmp_path / "inbox").stdout.split()
    assert len(ids) == 3
    first = run_imgq("enqueue")  # default, mono and soft, from the enqueue list
    assert sorted(first.stdout.split()) == sorted(ids)
    assert q(db_path, "SELECT recipe, count(*) FROM jobs GROUP BY recipe ORDER BY recipe") == [("default", 3), ("mono", 3), ("soft", 3)]
    assert run_imgq("work", "-j2").returncode == 0
    hashes = {r["name"]: r["spec_hash"] for r in map(json.loads, run_imgq("recipes", "--json").stdout.splitlines())}

    # nothing changed: nothing to do
    assert run_imgq("enqueue").stdout == ""
    # an equivalent spelling is the same recipe
    config.write_text(CONFIG.replace('"web|gray"', '" fit:640x480 | gray "'))
    assert run_imgq("enqueue").stdout == ""

    # one recipe edited: new jobs for it alone, one per file
    config.write_text(CONFIG.replace("gaussian=1.5", "gaussian=2.5"))
    jobs_before = q(db_path, "SELECT max(id) FROM jobs")[0][0]
    again = run_imgq("enqueue", "--json")
    assert again.returncode == 0, again.stderr
    assert sorted(json.loads(x)["id"] for x in again.stdout.splitlines() if json.loads(x)["jobs"]) == sorted(ids)
    new = q(db_path, "SELECT recipe, file_id FROM jobs WHERE id > ?", jobs_before)
    assert sorted(new) == sorted(("soft", i) for i in ids)
    after = {r["name"]: r["spec_hash"] for r in map(json.loads, run_imgq("recipes", "--json").stdout.splitlines())}
    assert [n for n in hashes if hashes[n] != after[n]] == ["soft"]
    # the files are queued again for the new jobs only, and processed once they are done
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"queued"}
    work = run_imgq("work", "-j2")
    assert work.returncode == 0 and sorted(work.stdout.split()) == sorted(ids)
    assert q(db_path, "SELECT count(*) FROM jobs WHERE state != 'done'") == [(0,)]
    # old and new outputs of the edited recipe live side by side, others were not redone
    assert q(db_path, "SELECT j.recipe, count(*) FROM artifacts a JOIN jobs j ON j.id = a.job_id GROUP BY j.recipe ORDER BY j.recipe") == [
        ("default", 6), ("mono", 3), ("soft", 6)
    ]
    assert run_imgq("enqueue").stdout == ""
    # --recipe still picks recipes explicitly, the enqueue list aside
    config.write_text(CONFIG.replace("gaussian=2.5", "gaussian=1.5").replace("web|gray", "web|invert"))
    only = run_imgq("enqueue", "--recipe", "soft")
    assert only.stdout == ""  # soft is back to a version that was already done


def test_bad_recipes_are_usage_errors_before_any_job(tmp_path, run_imgq, db_path):
    small_inbox(tmp_path / "inbox", n=1)
    run_imgq("scan", tmp_path / "inbox")
    cases = [
        ('[recipes.people]\nweb = "web|faces"\non_no_faces = "drop"\n', ["people", "on_no_faces", "'drop'", "'skip'"]),
        ('[recipes.people]\nweb = "web"\non_no_faces = "skip"\n', ["people", "needs a chain with a faces step"]),
        ('enqueue = ["default", "ghost"]\n', ["enqueue", "'ghost'"]),
    ]
    for text, words in cases:
        (tmp_path / "imgq.toml").write_text(text)
        r = run_imgq("enqueue", "--recipe", "people") if "people" in text else run_imgq("enqueue")
        assert r.returncode == 2, (text, r.stderr)
        assert all(w in r.stderr for w in words), r.stderr
        assert "Traceback" not in r.stderr
    assert q(db_path, "SELECT count(*) FROM jobs") == [(0,)]


def test_op_chains_end_to_end_each_one_artifact_from_one_job(tmp_path, run_imgq, db_path):
    small_inbox(tmp_path / "inbox", n=2)
    ids = run_imgq("scan", tmp_path / "inbox").stdout
    enq = run_imgq("enqueue", "--op", "web|brightness=1.2|sharpness=1.5", "--op", "web", "--op", "thumb|gray", "-", input=ids)
    assert enq.returncode == 0, enq.stderr
    assert run_imgq("work", "-j2").returncode == 0
    for file_id in ids.split():
        [(job_id, recipe, spec)] = q(db_path, "SELECT id, recipe, spec FROM jobs WHERE file_id = ?", file_id)  # one job, one decode
        assert recipe == "ops:web-brightness1.2-sharpness1.5+web+thumb-gray"
        assert json.loads(spec) == {"web-brightness1.2-sharpness1.5": "fit:640x480|brightness:1.2|sharpness:1.5", "web": "fit:640x480", "thumb-gray": "fit:120x90|gray"}
        outs = {n: tmp_path / "imgq-store" / p for n, p in q(db_path, "SELECT name, path FROM artifacts WHERE job_id = ?", job_id)}
        assert set(outs) == {"web-brightness1.2-sharpness1.5", "web", "thumb-gray"}
        with Image.open(outs["web"]) as plain, Image.open(outs["web-brightness1.2-sharpness1.5"]) as bright, Image.open(outs["thumb-gray"]) as t:
            assert plain.size == bright.size == (640, 480) and t.size == (120, 90)
            ratio = ImageStat.Stat(bright.convert("L")).mean[0] / ImageStat.Stat(plain.convert("L")).mean[0]
            assert 1.1 < ratio < 1.25  # 1.2 brighter, less what clips at white
            assert t.mode == "L"


def _heic(path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path.parent.mkdir(parents=True, exist_ok=True)
    samples.render(640, 480, seed=3).save(path, quality=80)
    os.utime(path, (OLD, OLD))
    return path


def test_missing_heic_extra_is_named_without_a_traceback(tmp_path, run_imgq, db_path):
    _heic(tmp_path / "inbox" / "alice" / "IMG_1.HEIC")
    # a Python in which pillow-heif cannot be imported, as on a host without imgq[heic]
    shim = tmp_path / "no_heif"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['pillow_heif'] = None\n")
    without = {"PYTHONPATH": os.pathsep.join([str(shim), str(Path(__file__).resolve().parents[1])])}

    # scanned where the extra is installed, worked where it is not: the job fails at once
    [file_id] = run_imgq("scan", tmp_path / "inbox").stdout.split()
    assert run_imgq("enqueue", file_id).returncode == 0
    work = run_imgq("work", "-j1", env=without)
    assert work.returncode == 1
    assert "IMG_1.HEIC" in work.stderr and "pip install 'imgq[heic]'" in work.stderr and "Traceback" not in work.stderr
    [(state, kind, error, attempts)] = q(db_path, "SELECT state, error_kind, error, attempts FROM jobs")
    assert (state, kind, attempts) == ("failed", "permanent", 1) and "pillow-heif" in error
    # with the extra the same job goes through after a retry
    assert run_imgq("retry").returncode == 0
    assert run_imgq("work", "-j1").returncode == 0
    assert q(db_path, "SELECT state FROM files") == [("processed",)]

    # scanned where the extra is missing: the file fails at scan, with the same advice
    _heic(tmp_path / "inbox" / "alice" / "IMG_2.HEIC")
    scan = run_imgq("scan", tmp_path / "inbox", env=without)
    assert "Traceback" not in scan.stderr
    [(state, error)] = q(db_path, "SELECT state, error FROM files WHERE path = 'alice/IMG_2.HEIC'")
    assert state == "failed" and "pip install 'imgq[heic]'" in error


def test_operations_reference_names_every_operation():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for name in ops.OPS:
        assert f"| `{name}` |" in doc, f"docs/operations.md has no row for {name}"
    for row in recipes.describe_operations():
        example = row["example"].replace("|", "\\|")
        assert f"`{example}`" in doc, f"docs/operations.md lacks the example of {row['name']}"
