"""One photographer, one name, whatever synced the folder.

A folder ``Zoë Müller`` synced from a Mac arrives spelled in Unicode NFD (o + combining
diaeresis), the same name from Linux in NFC: two different byte strings that look the
same. imgq compares and stores owners in NFC, keeps each file's path exactly as found
(so collect deletes the file that is there), and says in status which spellings it
merged.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata

import pytest

from imgq.samples import make_photo

NAME = "Zoë Müller"
NFC = unicodedata.normalize("NFC", NAME)
NFD = unicodedata.normalize("NFD", NAME)


@pytest.fixture
def two_spellings(tmp_path):
    assert NFC != NFD and NFC.encode() != NFD.encode()
    inbox = tmp_path / "inbox"
    make_photo(inbox / NFC / "a.jpg", width=320, height=240, seed=1)
    make_photo(inbox / NFD / "b.jpg", width=320, height=240, seed=2)
    return inbox


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


def rows(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT owner, path FROM files ORDER BY path").fetchall()
    finally:
        conn.close()


def test_both_spellings_are_one_owner_in_nfc_and_paths_stay_as_found(two_spellings, run_imgq, db_path):
    ok(run_imgq("scan", "--settle", "0", str(two_spellings)))
    found = rows(db_path)
    assert {owner for owner, _ in found} == {NFC}
    assert sorted(path for _, path in found) == sorted([f"{NFC}/a.jpg", f"{NFD}/b.jpg"])


def test_status_says_which_spellings_were_merged(two_spellings, run_imgq, db_path):
    ok(run_imgq("scan", "--settle", "0", str(two_spellings)))
    status = json.loads(ok(run_imgq("status", "--json")).stdout)
    merged = status["owners_merged"]
    assert [m["owner"] for m in merged] == [NFC]
    assert dict(zip(merged[0]["spellings"], merged[0]["forms"])) == {NFC: "NFC", NFD: "NFD"}
    text = ok(run_imgq("status")).stdout + ok(run_imgq("status")).stderr
    assert "NFD" in text and NFC in text


def test_archive_and_gallery_show_one_photographer(two_spellings, run_imgq, db_path, tmp_path):
    dest, site = tmp_path / "archive", tmp_path / "site"
    dest.mkdir()
    ok(run_imgq("run", "--settle", "0", str(two_spellings), "--to", str(dest)))
    owner_folders = {p.relative_to(dest).parts[2] for p in dest.rglob("*.jpg")}  # YYYY/YYYY-MM-DD/OWNER/name
    assert len(owner_folders) == 1, sorted(map(ascii, owner_folders))
    assert not list(two_spellings.rglob("*.jpg")), "both originals leave the inbox once archived"
    ok(run_imgq("publish", str(site)))
    index = (site / "index.html").read_text()
    assert NFD not in index, "the Mac spelling is not shown apart"
    # one entry under "By photographer", holding both photos
    import re

    entries = re.findall(r'href="owner/[^"]*"><b>([^<]*)</b>', index)
    assert entries == [NFC], entries
    assert "2 photos" in index


def test_a_journal_with_both_spellings_is_merged_when_opened(tmp_path):
    """A database from before owners were normalised, holding one photo under each
    spelling as two owners: opening it migrates to one owner, and status says so."""
    import sqlite_utils

    from imgq import status
    from imgq.ledger.database import DB
    from imgq.ledger.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for number, step in enumerate(MIGRATIONS[:10], start=1):
        step(db)
        conn.execute(f"PRAGMA user_version = {number}")
    for i, spelling in enumerate((NFC, NFD)):
        conn.execute(
            "INSERT INTO files (id, inbox, path, owner, size, sha256, state, created_at, updated_at) VALUES (?, '/in', ?, ?, 1, ?, 'seen', ?, ?)",
            (f"f{i}", f"{spelling}/p{i}.jpg", spelling, f"{i:064x}", 100.0 + i, 100.0 + i),
        )
    conn.close()
    new = DB(path)
    try:
        assert [r[0] for r in new.all("SELECT DISTINCT owner FROM files")] == [NFC]
        assert sorted(r[0] for r in new.all("SELECT path FROM files")) == sorted([f"{NFC}/p0.jpg", f"{NFD}/p1.jpg"])
        [merged] = status.snapshot(new, now=200.0)["owners_merged"]
        assert merged["owner"] == NFC and set(merged["spellings"]) == {NFC, NFD}
    finally:
        new.conn.close()
