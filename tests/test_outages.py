"""Retries that outlast outages: a transient failure is retried for a time, not a count.

The input share and an archive destination are taken away for longer than five attempts
cover and given back: everything completes with nobody running ``imgq retry``. The
timings are scaled down (a backoff from 0.1 s capped at 0.4 s, an outage of 4 s, a retry
window of 60 s) so the test is quick; the defaults are a day and 5 minutes.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

from imgq import samples

CONFIG = "settle = 0\nbackoff_seconds = 0.1\nbackoff_max_seconds = 0.4\nretry_for = 60\n"


def q(db, sql):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_work_outlasts_an_input_share_gone_longer_than_five_attempts(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text(CONFIG)
    share = tmp_path / "share"
    src = share / "inbox" / "dora" / "IMG_1.jpg"
    samples.make_photo(src, seed=4, width=320, height=240)
    ids = run_imgq("scan", share / "inbox").stdout.split()
    assert run_imgq("enqueue", *ids).returncode == 0
    away = tmp_path / "share-unmounted"
    share.rename(away)  # the share goes away
    started = time.monotonic()
    proc = _start(tmp_path, "work", "--drain", "-j1")
    time.sleep(4.0)  # five attempts at 0.1, 0.2, 0.4, 0.4 s are long over
    retries = q(db_path, "SELECT count(*) FROM events WHERE to_state = 'ready' AND detail LIKE 'retry in%'")[0][0]
    assert retries >= 5, "the job kept being retried during the outage"
    away.rename(share)  # and comes back
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ids
    assert q(db_path, "SELECT state FROM jobs") == [("done",)]
    assert time.monotonic() - started >= 4.0


def test_archive_and_collect_finish_once_a_destination_comes_back(tmp_path, run_imgq, db_path):
    (tmp_path / "imgq.toml").write_text(CONFIG)
    inbox, dest = tmp_path / "inbox", tmp_path / "backup"
    samples.make_photo(inbox / "dora" / "IMG_2.jpg", seed=5, width=320, height=240)
    dest.mkdir()
    first = run_imgq("run", inbox, "--to", dest)
    assert first.returncode == 0, first.stderr
    samples.make_photo(inbox / "dora" / "IMG_3.jpg", seed=6, width=320, height=240)
    dest.rename(tmp_path / "backup-away")  # the backup disk is unplugged
    for _ in range(6):  # cron runs during the outage: more than five failed copies
        run_imgq("run", inbox, "--to", dest)
        time.sleep(0.5)
    (tmp_path / "backup-away").rename(dest)
    last = run_imgq("run", inbox, "--to", dest)
    assert last.returncode == 0, last.stderr
    assert q(db_path, "SELECT state FROM files ORDER BY id") == [("collected",), ("collected",)]
    assert not list(inbox.rglob("*.jpg"))


def _start(cwd, *args):
    from conftest import imgq_env

    return subprocess.Popen(
        [sys.executable, "-m", "imgq", *args],
        cwd=cwd, env=imgq_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
