"""The database as a product: the views (photos, failures, queue, throughput) and the
catalogue behind `imgq datasette-metadata`, checked the way their users meet them.

The catalogue is checked against a freshly migrated database both ways (everything
described exists, everything that exists is described) and its canned queries run. A
real pipeline (scan, enqueue, work, archive, collect through the CLI) then fills a
database that is opened with sqlite-utils' Python API, its command-line tool and
Datasette, and each view is compared with what is true on disk and in the sample inbox.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlite_utils

from imgq import samples
from imgq.ledger import catalog
from imgq.ledger.database import DB

from conftest import REPO, imgq_subprocess

VIEWS = ("photos", "failures", "queue", "throughput")
BIN = Path(sys.executable).parent  # the venv's console scripts: sqlite-utils, datasette


def columns(conn, name: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_xinfo({name})")]


def iso_to_epoch(text: str) -> float:
    assert text.endswith("Z"), text
    return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.timezone.utc).timestamp()


def check_iso_twins(rows: list[dict]) -> int:
    """Every X_at has an X_iso twin holding the same instant (to the millisecond); returns
    how many non-empty pairs were compared."""
    compared = 0
    for row in rows:
        for col, value in row.items():
            if not col.endswith("_at"):
                continue
            twin = col[: -len("_at")] + "_iso"
            assert twin in row, f"{col} has no {twin}"
            if value is None:
                assert row[twin] is None, (col, row)
                continue
            assert abs(iso_to_epoch(row[twin]) - value) <= 0.0011, (col, value, row[twin])
            compared += 1
    return compared


# ------------------------------------------------------------------- the catalogue, fresh db


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    db = DB(tmp_path_factory.mktemp("fresh") / "imgq.db")
    yield db.conn
    db.close()


def test_the_catalogue_describes_every_table_view_and_column_and_nothing_else(fresh):
    described = catalog.catalog()["tables"]
    objects = {name: kind for name, kind in fresh.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")}
    assert {v: "view" for v in VIEWS}.items() <= objects.items()
    assert sorted(described) == sorted(objects), "described tables differ from the database's"
    for name, entry in described.items():
        cols = columns(fresh, name)
        assert entry["description"].strip(), name
        assert sorted(entry["columns"]) == sorted(cols), f"{name}: described columns differ from the database's"
        assert all(text.strip() for text in entry["columns"].values()), name
        for col in entry.get("facets", []) + [entry[k] for k in ("sort", "sort_desc") if k in entry]:
            assert col in cols, f"{name}: facet or sort column {col} does not exist"


def test_every_epoch_column_of_a_view_has_its_iso_twin(fresh):
    for view in VIEWS:
        cols = columns(fresh, view)
        epochs = [c for c in cols if c.endswith("_at")]
        assert epochs, view
        for c in epochs:
            assert c[:-3] + "_iso" in cols, f"{view}.{c} has no ISO twin"
            assert cols.index(c[:-3] + "_iso") == cols.index(c) + 1, f"{view}: {c}'s twin is not beside it"


def test_views_and_canned_queries_work_on_an_empty_database(fresh):
    for view in VIEWS:
        assert fresh.execute(f"SELECT * FROM {view}").fetchall() == []
    for name, query in catalog.catalog()["queries"].items():
        cursor = fresh.execute(query["sql"])
        assert cursor.fetchall() == [], name
        assert query["title"] and query["description"], name


def test_views_read_through_indexes(fresh):
    """No view reads a whole table other than the one it lists: failures, queue and
    throughput touch only their rows, photos looks each photo's artifacts, copies, faces
    and tags up by index, and its newest rows come first without sorting them all."""

    def plan(sql):
        return [r[3] for r in fresh.execute("EXPLAIN QUERY PLAN " + sql)]

    for view in ("failures", "queue", "throughput"):
        # a SCAN of a table without an index; the scan of the view's own result (a
        # co-routine or subquery) reads only rows already chosen
        full = [step for step in plan(f"SELECT * FROM {view}") if step.startswith("SCAN ") and " INDEX " not in step and "subquery" not in step and step != f"SCAN {view}"]
        assert full == [], (view, plan(f"SELECT * FROM {view}"))
    steps = plan("SELECT * FROM photos")
    assert [s for s in steps if s.startswith("SCAN ") and "subquery" not in s] == ["SCAN f"], steps
    assert all("USING" in s for s in steps if s.startswith("SEARCH")), steps
    newest = plan("SELECT * FROM photos ORDER BY seen_at DESC LIMIT 101")
    assert "SCAN f USING INDEX idx_files_created_at" in newest and not any("TEMP B-TREE FOR ORDER BY" in s for s in newest), newest
    # the "waiting over an hour" query looks photos up by state
    assert any("idx_files_state" in s for s in plan(catalog.catalog()["queries"]["waiting_over_an_hour"]["sql"]))


def test_a_database_made_before_the_views_gets_them_with_its_rows(tmp_path):
    """A database of schema 8 (the version before the views) with a photo in it: opening
    it migrates, and the views show what it already held."""
    from imgq.ledger.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for number, step in enumerate(MIGRATIONS[:8], start=1):
        step(db)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO files (id, inbox, path, owner, size, sha256, taken_at, taken_source, state, error, created_at, updated_at)"
        " VALUES ('a_1_x.jpg', '/in', 'a/x.jpg', 'a', 10, 'ff', '2024-05-17T08:00:00', 'exif', 'failed', 'not an image', 1715932800.25, 1715932801.5)"
    )
    conn.close()
    new = DB(path)
    try:
        [photo] = [dict(r) for r in new.all("SELECT * FROM photos")]
        assert (photo["id"], photo["state"], photo["inbox_path"], photo["seen_iso"], photo["changed_iso"]) == (
            "a_1_x.jpg", "failed", "/in/a/x.jpg", "2024-05-17T08:00:00.250Z", "2024-05-17T08:00:01.500Z")
        [failure] = [dict(r) for r in new.all("SELECT * FROM failures")]
        assert (failure["step"], failure["reason"], failure["retrying"]) == ("scan", "not an image", 0)
    finally:
        new.close()


def test_the_metadata_in_docs_is_the_catalogue():
    shipped = (REPO / "docs" / "datasette-metadata.json").read_text(encoding="utf-8")
    assert shipped == catalog.datasette_json(), "docs/datasette-metadata.json is stale: run bin/gen-docs"
    meta = json.loads(shipped)
    assert set(meta["databases"]["imgq"]["tables"]) >= set(VIEWS)


# ------------------------------------------------------------------- a real pipeline


def q(db_file, sql, *params) -> list[tuple]:
    conn = sqlite3.connect(db_file)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def imgq(cwd, *args, input=None, ok=(0,)):
    out = imgq_subprocess(*args, cwd=cwd, input=input)
    assert out.returncode in ok, (args, out.returncode, out.stderr)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A database filled by the real CLI, with every view given something to show:

    - 5 photos archived at d1 and d2, one of them then collected; a duplicate; a
      truncated JPEG whose job failed (work);
    - a third destination that does not exist: each archived photo waits there (archive);
    - one archived photo whose copy at d1 was damaged, kept by collect (collect);
    - a photo scanned and enqueued later, its job ready (queue); a text file (scan).
    """
    root = tmp_path_factory.mktemp("views")
    inbox = samples.make_inbox(root / "inbox", per_owner=1, size=(320, 240))
    d1, d2 = root / "d1", root / "d2"
    d1.mkdir(), d2.mkdir()
    scanned = imgq(root, "scan", inbox.root).stdout.split()
    imgq(root, "enqueue", "-", input="\n".join(scanned))
    imgq(root, "work", "--drain", "-j1", ok=(1,))  # the truncated JPEG fails
    archived = imgq(root, "archive", "--to", d1, "--to", d2).stdout.split()
    imgq(root, "archive", "--to", d1, "--to", d2, "--to", root / "missing", ok=(0, 1))

    by_path = dict(q(root / "imgq.db", "SELECT path, id FROM files"))
    collected = by_path["bob/IMG_0001.jpg"]
    kept = by_path["carol/IMG_0001.jpg"]
    imgq(root, "collect", "--to", d1, "--to", d2, collected)
    [(bad_copy,)] = q(root / "imgq.db", "SELECT path FROM copies WHERE file_id = ? AND destination = ? AND artifact_id IS NULL", kept, str(d1))
    (d1 / bad_copy).write_bytes(b"not the photo any more")
    imgq(root, "collect", "--to", d1, "--to", d2, kept, ok=(1,))

    late = samples.make_photo(inbox.root / "dave" / "late.jpg", width=320, height=240, seed=99, taken=dt.datetime(2024, 6, 1, 12, 0))
    (inbox.root / "notes.txt").write_text("hello\n")
    for p in (late, inbox.root / "notes.txt"):
        os.utime(p, (1_700_000_000, 1_700_000_000))  # settled long ago
    late_ids = imgq(root, "scan", inbox.root, ok=(0, 1)).stdout.split()
    imgq(root, "enqueue", "-", input="\n".join(late_ids))
    return {
        "root": root, "db": root / "imgq.db", "inbox": inbox, "late": late, "d1": d1, "d2": d2, "missing": root / "missing",
        "archived": archived, "collected": collected, "kept": kept, "scanned": scanned, "late_ids": late_ids,
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_photos_view_tells_each_photos_story(pipeline):
    inbox, d1, d2 = pipeline["inbox"], pipeline["d1"], pipeline["d2"]
    db = sqlite_utils.Database(pipeline["db"])
    assert set(VIEWS) <= set(db.view_names())
    photos = {r["path"]: r for r in db["photos"].rows}
    originals = {Path(p).relative_to(inbox.root).as_posix(): p for p in inbox["files"]}
    assert set(photos) == set(originals) | {"dave/late.jpg", "notes.txt"}

    broken = Path(inbox["broken"][0]).relative_to(inbox.root).as_posix()
    duplicate = Path(inbox["duplicate"]["copy"]).relative_to(inbox.root).as_posix()
    expected_state = {rel: "archived" for rel in originals}
    expected_state.update({broken: "failed", duplicate: "duplicate", "bob/IMG_0001.jpg": "collected", "dave/late.jpg": "queued", "notes.txt": "failed"})
    assert {rel: r["state"] for rel, r in photos.items()} == expected_state

    for rel, original in originals.items():
        r = photos[rel]
        assert r["sha256"] == inbox["sha256"][original]
        assert r["inbox_path"] == f"{r['inbox']}/{rel}" and Path(r["inbox"]).resolve() == Path(inbox.root).resolve()
        taken = inbox["taken"].get(original)
        if taken is not None:
            assert (r["taken"], r["taken_source"]) == (taken.isoformat(), "exif")
        if expected_state[rel] in ("archived", "collected"):
            assert (r["artifacts"], r["artifact_names"]) == (2, "thumb,web")
            assert (r["copies"], r["copied_to"]) == (2, f"{d1},{d2}")
            assert r["artifact_copies"] == 4
            # the copies are real: the original's bytes are at both destinations
            for dest in (d1, d2):
                found = [p for p in dest.rglob("*") if p.is_file() and p.stat().st_size == r["bytes"] and sha256(p) == r["sha256"]]
                assert found or (rel == "carol/IMG_0001.jpg" and dest == d1), (rel, dest)
            assert r["verified_at"] is not None and r["error"] is None
        else:
            assert (r["artifacts"], r["copies"], r["copied_to"]) == (0, 0, None)
        if expected_state[rel] == "collected":
            assert not Path(original).exists()
        else:
            assert r["bytes"] == Path(original).stat().st_size
    assert "truncated" in photos[broken]["error"]
    assert photos[duplicate]["duplicate_of"] == photos[Path(inbox["duplicate"]["original"]).relative_to(inbox.root).as_posix()]["id"]
    assert photos["notes.txt"]["error"].startswith("not an image")
    late = photos["dave/late.jpg"]
    assert (late["owner"], late["taken"], late["bytes"], late["sha256"]) == ("dave", "2024-06-01T12:00:00", pipeline["late"].stat().st_size, sha256(pipeline["late"]))
    assert late["modified_at"] == pytest.approx(1_700_000_000) and late["modified_iso"] == "2023-11-14T22:13:20.000Z"
    assert check_iso_twins(list(photos.values())) >= 3 * len(photos)


@pytest.mark.slow
def test_failures_view_has_each_problem_with_its_step(pipeline):
    db = sqlite_utils.Database(pipeline["db"])
    rows = list(db["failures"].rows)
    by_step = Counter(r["step"] for r in rows)
    archived_at_missing = {r["file_id"] for r in rows if r["step"] == "archive"}
    # every photo archive copied waits for the destination that does not exist
    assert archived_at_missing == set(pipeline["archived"]) and by_step["archive"] == len(pipeline["archived"])
    assert {r["destination"] for r in rows if r["step"] == "archive"} == {str(pipeline["missing"])}
    assert all(r["retrying"] == 1 and r["kind"] == "transient" and r["next_try_at"] >= r["failed_at"] for r in rows if r["step"] == "archive")

    [work] = [r for r in rows if r["step"] == "work"]
    assert "truncated" in work["reason"] and (work["kind"], work["retrying"], work["attempts"]) == ("permanent", 0, 1)
    assert [(work["job_id"],)] == q(pipeline["db"], "SELECT id FROM jobs WHERE state = 'failed'")
    [scan] = [r for r in rows if r["step"] == "scan"]
    assert scan["inbox_path"].endswith("/notes.txt") and scan["reason"].startswith("not an image") and scan["retrying"] == 0
    [collect] = [r for r in rows if r["step"] == "collect"]
    assert collect["file_id"] == pipeline["kept"] and collect["retrying"] == 1 and collect["reason"]
    assert set(by_step) == {"work", "scan", "archive", "collect"}
    assert check_iso_twins(rows) >= len(rows)


@pytest.mark.slow
def test_queue_view_shows_the_job_waiting(pipeline):
    db = sqlite_utils.Database(pipeline["db"])
    [job] = list(db["queue"].rows)
    assert job["file_id"] == pipeline["late_ids"][0] and len(pipeline["late_ids"]) == 1
    assert (job["state"], job["due"], job["recipe"], job["stage"], job["attempts"], job["leased_by"]) == ("ready", 1, "default", "", 0, None)
    assert json.loads(job["spec"])["thumb"]
    assert Path(job["inbox_path"]).resolve() == pipeline["late"].resolve()
    assert check_iso_twins([job]) == 2  # due_at (0: due at once) and queued_at; no lease


@pytest.mark.slow
def test_throughput_view_counts_what_work_did(pipeline):
    db = sqlite_utils.Database(pipeline["db"])
    rows = list(db["throughput"].rows)
    done = [r["updated_at"] for r in db.query("SELECT updated_at FROM jobs WHERE state = 'done'")]
    assert len(done) == len(pipeline["archived"]) == 5
    assert sum(r["jobs_done"] for r in rows) == 5 and sum(r["jobs_failed"] for r in rows) == 1
    assert sum(r["photos_processed"] for r in rows) == 5
    per_minute = Counter(int(t // 60) * 60 for t in done)
    assert {r["minute_at"]: r["jobs_done"] for r in rows if r["jobs_done"]} == dict(per_minute)
    assert {r["host"] for r in rows} == {socket.gethostname()}
    assert check_iso_twins(rows) == len(rows)


@pytest.mark.slow
def test_sqlite_utils_command_line_reads_the_views(pipeline):
    db_file = pipeline["db"]
    api = sqlite_utils.Database(db_file)

    def cli(*args):
        out = subprocess.run([BIN / "sqlite-utils", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = json.loads(cli("views", db_file))
    assert {v["view"] for v in listed} == set(VIEWS)
    for view in VIEWS:
        expected = list(api[view].rows)
        assert expected, view
        assert json.loads(cli("query", db_file, f"select * from {view}")) == expected
        assert json.loads(cli("rows", db_file, view)) == expected
    counts = json.loads(cli("query", db_file, "select state, count(*) as n from photos group by state order by state"))
    assert counts == [{"state": s, "n": n} for s, n in sorted(Counter(r["state"] for r in api["photos"].rows).items())]


@pytest.mark.slow
def test_datasette_opens_the_database_with_the_metadata(pipeline):
    datasette = BIN / "datasette"
    if not datasette.exists():
        pytest.skip("datasette is not installed (it is in imgq[test]: bin/test installs it)")
    root, db_file = pipeline["root"], pipeline["db"]
    printed = imgq(root, "datasette-metadata").stdout
    assert printed == (REPO / "docs" / "datasette-metadata.json").read_text(encoding="utf-8")
    metadata = root / "metadata.json"
    metadata.write_text(printed)
    other = json.loads(imgq(root, "datasette-metadata", "--name", "photos-2024").stdout)
    assert list(other["databases"]) == ["photos-2024"]  # as Datasette names photos-2024.db
    assert other["databases"]["photos-2024"] == json.loads(printed)["databases"]["imgq"]

    def get(path):
        out = subprocess.run([datasette, db_file, "--metadata", metadata, "--get", path], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (path, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    api = sqlite_utils.Database(db_file)
    shown = json.loads(get("/imgq/photos.json?_shape=array&_size=max&_sort=id"))
    assert shown == sorted(api["photos"].rows, key=lambda r: r["id"])
    page = get("/imgq/photos")
    assert "One row per photo" in page
    failed = json.loads(get("/imgq/failed_today.json?_shape=array"))
    assert {(r["step"], r["file_id"]) for r in failed} == {
        (r["step"], r["file_id"]) for r in api["failures"].rows if r["retrying"] == 0
    }
    per_destination = {r["destination"]: r for r in json.loads(get("/imgq/copies_per_destination.json?_shape=array"))}
    assert set(per_destination) == {str(pipeline["d1"]), str(pipeline["d2"])}
    assert per_destination[str(pipeline["d2"])]["originals"] == 5 and per_destination[str(pipeline["d2"])]["artifacts"] == 10
    for name in catalog.catalog()["queries"]:
        json.loads(get(f"/imgq/{name}.json?_shape=array"))  # each canned query runs through Datasette
