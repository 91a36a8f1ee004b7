"""imgq report and imgq work --report: run reports read back from the journal."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import time

import pytest

from imgq import scan as inbox_lib
from imgq import report, samples
from imgq.ledger import queue, runs
from imgq import work as worker
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.errors import NotFound, UsageError
from imgq.ledger.journal import Actor


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


# --------------------------------------------------------------------------- the library


def test_parse_since():
    now = 1_700_000_000.0
    assert report.parse_since("30m", now=now) == now - 1800
    assert report.parse_since("1h", now=now) == now - 3600
    assert report.parse_since("2d", now=now) == now - 2 * 86400
    assert report.parse_since(" 1.5h ", now=now) == now - 5400
    assert report.parse_since("2023-11-14T22:13:20Z", now=now) == now
    assert report.parse_since("2023-11-14T23:13:20+01:00", now=now) == now
    local = dt.datetime(2024, 5, 17, 8, 0)
    assert report.parse_since("2024-05-17T08:00", now=now) == local.astimezone().timestamp()
    assert report.parse_since("2024-05-17", now=now) == dt.datetime(2024, 5, 17).astimezone().timestamp()
    for bad in ("yesterday", "10", "5x", "", "-1h"):
        with pytest.raises(UsageError):
            report.parse_since(bad, now=now)


def test_a_fleet_run_counted_per_host_and_recipe(tmp_path):
    """Two hosts share a run; one job hits a full disk and is retried, one fails for
    good, and events outside the run's window are not counted."""
    box = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(320, 240), with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    settings = Settings(db=tmp_path / "imgq.db")
    db = DB(settings.db)
    t0 = time.time()
    ids = inbox_lib.scan(db, [box.root], now=t0, settle=0).new_ids
    assert len(ids) == 6
    queue.enqueue(db, ids, {"default": {"thumb": "thumb", "web": "web"}}, now=t0 + 1, max_attempts=3)
    run_id = runs.start(db, "work", {"hosts": "h1,h2"}, now=t0 + 10)

    def take(host, n, now):
        return queue.claim(db, owner=f"{host}:1:w0", limit=n, lease_seconds=60, now=now, actor=Actor(host=host, name=f"{host}:1:w0"))

    def settle(host, outcomes, now):
        return queue.settle(db, outcomes, now=now, actor=Actor(host=host, name=f"{host}:1:w0"), backoff=1, backoff_max=1, store_dir=settings.store_dir)

    h1 = take("h1", 3, t0 + 11)
    settle("h1", [worker.process(c, settings) for c in h1], t0 + 12)
    h2 = take("h2", 3, t0 + 13)
    full = queue.Outcome(h2[0], error=f"{box.root / h2[0].path}: No space left on device", kind="transient")
    bad = queue.Outcome(h2[1], error="not a decodable image", kind="permanent")
    settle("h2", [full, bad, worker.process(h2[2], settings)], t0 + 14)
    again = take("h1", 3, t0 + 50)  # the retried job, after its backoff
    assert [c.job_id for c in again] == [h2[0].job_id]
    settle("h1", [worker.process(again[0], settings)], t0 + 51)
    runs.finish(db, run_id, exit_code=1, counts={}, now=t0 + 60)

    rep = report.build(db, now=t0 + 65, store_dir=settings.store_dir)
    assert rep["scope"] == {"run": run_id, "command": "work"}
    assert rep["wall_seconds"] == 50 and not rep["running"]
    assert rep["inputs"] == [str(box.root)]
    assert rep["outputs"]["store"] == str(settings.store_dir)
    assert rep["photos"]["processed"] == 5
    assert rep["photos"]["files"] == {"processed": 5, "failed": 1}
    assert rep["jobs"] == {"claimed": 7, "done": 5, "retried": 1, "failed": 1, "reclaimed": 0, "released": 0, "enqueued": 0, "rearmed": 0}
    hosts = {h["host"]: h for h in rep["hosts"]}
    assert set(hosts) == {"h1", "h2"}
    assert (hosts["h1"]["claimed"], hosts["h1"]["done"], hosts["h1"]["photos"], hosts["h1"]["failed"]) == (4, 4, 4, 0)
    assert (hosts["h2"]["claimed"], hosts["h2"]["done"], hosts["h2"]["retried"], hosts["h2"]["failed"]) == (3, 1, 1, 1)
    assert rep["recipes"] == [{"recipe": "default", "enqueued": 0, "done": 5, "retried": 1, "failed": 1}]
    assert rep["retry_reasons"] == [{"reason": "No space left on device", "count": 1}]
    [failure] = rep["failures"]
    assert failure["file_id"] == h2[1].file_id and failure["reason"] == "not a decodable image"
    assert failure["kind"] == "permanent" and failure["host"] == "h2"
    assert failure["path"] == str(box.root / h2[1].path)
    done_files = [f for f in ids if f != h2[1].file_id]
    sizes = sum(r[0] for r in db.all(f"SELECT size FROM files WHERE id IN ({','.join('?' * len(done_files))})", done_files))
    assert rep["bytes"]["in"] == sizes and rep["photos"]["read"] == 5
    assert rep["bytes"]["out"] == db.one("SELECT sum(bytes) FROM artifacts")[0] and rep["bytes"]["artifacts"] == 10
    assert rep["throughput"]["photos_per_second"] == 0.1
    assert rep["processing_seconds"] > 0

    text = report.format_text(rep)
    assert f"run {run_id} (work)" in text and "exit 1" in text
    assert "5 processed" in text and "1 failed" in text
    assert "1 × No space left on device" in text
    assert f"{box.root / h2[1].path}: not a decodable image [permanent]" in text

    # after the run the failed job is re-armed: the run's report still shows the failure
    queue.retry(db, now=t0 + 70, actor=Actor(host="h3", name="retry"))
    [failure] = report.build(db, now=t0 + 100)["failures"]
    assert failure["reason"] == "not a decodable image" and failure["job_state"] == "ready"
    assert "not a decodable image [re-armed since]" in report.format_text(report.build(db, now=t0 + 100))

    # --since counts every run in the window; wall time is the time runs were going
    since = report.build(db, now=t0 + 100, since=t0 + 5)
    assert since["scope"] == {"since": report.iso(t0 + 5)}
    assert [r["id"] for r in since["runs"]] == [run_id]
    assert since["wall_seconds"] == 50
    assert since["jobs"]["rearmed"] == 1 and since["jobs"]["done"] == 5
    later = report.build(db, now=t0 + 100, since=t0 + 65)
    assert later["runs"] == [] and later["wall_seconds"] == 35
    assert later["jobs"]["done"] == 0 and later["jobs"]["rearmed"] == 1
    assert later["hosts"] == []  # re-arming is not work done by a host


def test_no_work_run_yet(tmp_path):
    db = DB(tmp_path / "imgq.db")
    with pytest.raises(NotFound, match="no `imgq work` run"):
        report.build(db, now=time.time())
    with pytest.raises(NotFound, match="no run 7"):
        report.build(db, now=time.time(), run_id=7)


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def worked(inbox, run_imgq, tmp_path):
    """scan | enqueue | work --report FILE.json, for real, on the sample inbox."""
    assert run_imgq("scan", inbox).returncode == 0
    assert run_imgq("enqueue").returncode == 0
    work = run_imgq("work", "-j2", "--drain", "--report", "run.json")
    assert work.returncode == 1, work.stderr  # the truncated JPEG
    return tmp_path / "run.json"


def test_work_report_file_matches_imgq_report(worked, run_imgq, db_path, inbox):
    written = json.loads(worked.read_text())
    [(run_id,)] = q(db_path, "SELECT id FROM runs WHERE command = 'work'")
    assert written["scope"] == {"run": run_id, "command": "work"}
    r = run_imgq("report", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == written
    assert json.loads(run_imgq("report", "--run", str(run_id), "--json").stdout) == written

    processed = q(db_path, "SELECT count(*) FROM files WHERE state = 'processed'")[0][0]
    assert written["photos"]["processed"] == processed > 0
    assert written["jobs"]["done"] == processed and written["jobs"]["failed"] == 1
    assert written["runs"][0]["exit_code"] == 1 and written["runs"][0]["ended"]
    [(started, ended)] = q(db_path, "SELECT started_at, ended_at FROM runs WHERE id = ?", run_id)
    assert written["wall_seconds"] == round(ended - started, 3)
    assert written["inputs"] == [str(inbox.root)]
    assert [h["host"] for h in written["hosts"]] == [socket.gethostname()]
    assert written["hosts"][0]["photos"] == processed
    [failure] = written["failures"]
    assert "truncated" in failure["path"] and "truncated" in failure["reason"]
    assert written["bytes"]["out"] == q(db_path, "SELECT sum(bytes) FROM artifacts")[0][0]


def test_text_report(worked, run_imgq, db_path, tmp_path):
    processed = q(db_path, "SELECT count(*) FROM files WHERE state = 'processed'")[0][0]
    r = run_imgq("report")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("imgq report: run ")
    for text in (f"{processed} processed", f"{processed} done, 1 failed", "photos/s", socket.gethostname(), "failures:   1", "IMG_9999_truncated.jpg: truncated"):
        assert text in r.stdout, text
    # a text report file is the same text
    again = run_imgq("work", "--drain", "--report", "again.txt")
    assert again.returncode == 0
    text = (tmp_path / "again.txt").read_text()
    assert "0 processed" in text and "failures:   none" in text
    assert text == run_imgq("report").stdout


def test_report_on_other_runs_and_windows(worked, run_imgq, db_path):
    [(scan_id,)] = q(db_path, "SELECT id FROM runs WHERE command = 'scan'")
    scan = json.loads(run_imgq("report", "--run", str(scan_id), "--json").stdout)
    assert scan["scope"]["command"] == "scan"
    seen = q(db_path, "SELECT count(*) FROM events WHERE entity = 'file' AND to_state = 'seen'")[0][0]
    assert scan["photos"]["files"]["seen"] == seen and scan["photos"]["files"]["duplicate"] == 1
    assert scan["jobs"]["done"] == 0
    day = json.loads(run_imgq("report", "--since", "1h", "--json").stdout)
    assert [r["command"] for r in day["runs"]] == ["scan", "enqueue", "work"]
    assert day["photos"]["processed"] == q(db_path, "SELECT count(*) FROM files WHERE state = 'processed'")[0][0]
    assert day["recipes"][0]["enqueued"] == day["jobs"]["enqueued"] > 0
    future = json.loads(run_imgq("report", "--since", "2999-01-01T00:00Z", "--json").stdout)
    assert future["runs"] == [] and future["jobs"]["done"] == 0


def test_report_usage_errors(run_imgq, tmp_path, db_path):
    DB(db_path).close()  # a database with no run yet (report never creates one)
    r = run_imgq("report")
    assert r.returncode == 2 and "no `imgq work` run" in r.stderr
    assert run_imgq("report", "--run", "5").returncode == 2
    r = run_imgq("report", "--since", "last tuesday")
    assert r.returncode == 2 and "30m" in r.stderr
    assert run_imgq("report", "--run", "1", "--since", "1h").returncode == 2
    r = run_imgq("work", "--drain", "--report", "no/such/folder/r.json")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_report_on_an_archive_run(worked, run_imgq, db_path, tmp_path):
    dest = tmp_path / "archive"
    dest.mkdir()
    assert run_imgq("archive", "--to", dest).returncode == 0
    [(run_id,)] = q(db_path, "SELECT id FROM runs WHERE command = 'archive'")
    rep = json.loads(run_imgq("report", "--run", str(run_id), "--json").stdout)
    copies, size = q(db_path, "SELECT count(*), sum(bytes) FROM copies")[0]
    assert rep["bytes"]["copies"] == copies > 0 and rep["bytes"]["archived"] == size
    assert rep["outputs"]["destinations"] == [str(dest)]
    assert rep["photos"]["files"]["archived"] == q(db_path, "SELECT count(*) FROM files WHERE state = 'archived'")[0][0]
    assert rep["jobs"]["done"] == 0
    assert f"archived ({copies} copies)" in run_imgq("report", "--run", str(run_id)).stdout


def test_every_event_names_its_run_and_a_run_report_is_exact(tmp_path):
    """Each command's events carry its run's id (imgq run's, through its workers too), so
    `imgq report --run ID` counts exactly that run, even with another run at the same
    time; and it shows the batches: each photographer's new photos in one scan."""
    import subprocess
    import sys

    from conftest import imgq_env

    def imgq(*args):
        r = subprocess.run([sys.executable, "-m", "imgq", *map(str, args)], cwd=tmp_path, env=imgq_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r

    inbox, dest = tmp_path / "inbox", tmp_path / "backup"
    dest.mkdir()
    for owner, n in (("alice", 3), ("bob", 1)):
        for i in range(n):
            samples.make_photo(inbox / owner / f"IMG_{i}.jpg", seed=10 * len(owner) + i, width=320, height=240)
    imgq("run", "--settle", "0", inbox, "--to", dest)
    samples.make_photo(inbox / "carol" / "IMG_0.jpg", seed=99, width=320, height=240)
    imgq("scan", "--settle", "0", inbox)
    db = DB(tmp_path / "imgq.db")
    try:
        runs = {r["command"]: r["id"] for r in db.all("SELECT id, command FROM runs")}
        by_run = dict(db.all("SELECT run_id, count(*) FROM events GROUP BY run_id"))
        assert None not in by_run, "every event names its run"
        # the run's own steps and its workers' completions are all its events
        kinds = {tuple(r) for r in db.all("SELECT DISTINCT entity, to_state FROM events WHERE run_id = ?", (runs["run"],))}
        assert {("file", "seen"), ("job", "done"), ("file", "collected")} <= kinds
        rep = report.build(db, now=time.time(), run_id=runs["run"])
    finally:
        db.close()
    assert rep["events"] == "named by the run"
    assert rep["photos"]["processed"] == 4 and rep["jobs"]["done"] == 4
    assert rep["batches"] == {"count": 2, "largest": 3, "average": 2.0}
    assert [(o["owner"], o["found"], o["processed"]) for o in rep["photographers"]] == [("alice", 3, 3), ("bob", 1, 1)]
    text = imgq("report", "--run", runs["run"]).stdout
    assert "batches:    2" in text and "largest 3" in text and "alice" in text
    scan = imgq("report", "--run", runs["scan"], "--json").stdout
    assert json.loads(scan)["batches"] == {"count": 1, "largest": 1, "average": 1.0}
