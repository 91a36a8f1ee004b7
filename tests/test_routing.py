"""Destinations chosen by rule: [[route]] by artifact, owner and recipe, and a route
command; with real photos, the real CLI (`imgq run`, `imgq archive`, `imgq collect`) and
real folders as destinations."""

from __future__ import annotations

import json
import sqlite3
import sys
import unicodedata
from pathlib import Path

import pytest

from imgq import routing, samples
from imgq.config import load_settings
from imgq.errors import RouteFailed, UsageError

ZOE = "Zoë Müller"


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def files_under(root: Path) -> list[str]:
    """The archive's files (the journal's snapshots left out)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not str(p.relative_to(root)).startswith("imgq-journal/"))


def photos_in(inbox: Path) -> list[str]:
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*.jpg"))


def make_inbox(tmp_path, photographers):
    return samples.make_inbox(tmp_path / "inbox", photographers=photographers, per_owner=1, size=(160, 120),
                              with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)


def write_toml(tmp_path, text: str) -> Path:
    (tmp_path / "imgq.toml").write_text(text)
    return tmp_path / "imgq.toml"


# --- in-process: the rules and the validation of an answer --------------------------------------


def test_rules_parse_and_a_bad_rule_or_a_shell_string_command_is_refused(tmp_path):
    cfg = write_toml(tmp_path, f'destinations = ["A"]\n[[route]]\nto = "W"\nartifacts = ["web"]\n[[route]]\nto = "Z"\nowners = ["{unicodedata.normalize("NFD", ZOE)}"]\n')
    r = routing.from_settings(None, load_settings(cfg))
    assert r.urls == [str(tmp_path / n) for n in "AWZ"]  # relative to imgq.toml
    assert r.may_take_originals() == [str(tmp_path / "A"), str(tmp_path / "Z")]
    takes = r.rules[2].takes
    assert takes(ZOE, "original", None, set()) and not takes("alice", "original", None, set())  # compared in NFC
    assert routing.from_settings(["/elsewhere"], load_settings(cfg)) is None  # --to overrides the rules
    for bad in ('route_command = "/bin/route --x"', '[[route]]\nartifacts = ["web"]', '[[route]]\nto = "W"\nwho = ["x"]'):
        with pytest.raises(UsageError):
            load_settings(write_toml(tmp_path, bad))


def test_an_answer_naming_an_unknown_destination_or_item_is_refused(tmp_path):
    r = routing.Routing([routing.Rule("/a"), routing.Rule("/b", artifacts=frozenset())], ["x"], known=frozenset({"original", "web"}))
    assert routing.validate(r, {"destinations": ["/b/"]}) == {"/b": None}
    assert routing.validate(r, {"destinations": {"/b": ["web"]}}) == {"/b": ["web"]}
    for garbage in ([], {"destinations": ["/c"]}, {"destinations": {"/b": ["raw"]}}, {"destinations": "/b"}, {"to": ["/b"]}):
        with pytest.raises(RouteFailed):
            routing.validate(r, garbage)


# --- the CLI: real photos, real folders ------------------------------------------------------------


def test_rules_by_artifact_owner_and_recipe_and_a_web_only_destination_does_not_block_collect(tmp_path, run_imgq, db_path):
    inbox = make_inbox(tmp_path, ("alice", unicodedata.normalize("NFD", ZOE)))  # synced from a Mac
    a, web, zoe, tiny = (tmp_path / n for n in ("archive-a", "web", "zoe", "tiny"))
    for d in (a, web, zoe, tiny):
        d.mkdir()
    write_toml(tmp_path, f"""
enqueue = ["default", "small"]
[recipes.small]
tiny = "fit:32x32"
[[route]]
to = "{a}"
[[route]]
to = "{web}"
artifacts = ["web", "thumb"]
[[route]]
to = "{zoe}"
owners = ["{ZOE}"]
[[route]]
to = "{tiny}"
recipes = ["small"]
""")
    r = run_imgq("run", inbox.root)
    assert r.returncode == 0, r.stderr
    everything = files_under(a)
    assert sum(n.endswith(".tiny.jpg") for n in everything) == 2 and sum(n.endswith(".web.jpg") for n in everything) == 2
    # the web server: web versions and thumbnails only, never an original
    assert files_under(web) and all(n.endswith((".web.jpg", ".thumb.jpg")) for n in files_under(web))
    assert not (web / "imgq-journal").exists() and (a / "imgq-journal").is_dir()  # nor the journal's snapshot
    assert len(files_under(web)) == 4
    # Zoë's share: all of hers (original and every artifact), nobody else's
    assert files_under(zoe) == sorted(n for n in everything if "/Zo" in n) and len(files_under(zoe)) == 4
    # the recipe's destination: its artifacts and the originals it processed, not the default recipe's
    assert sum(n.endswith(".tiny.jpg") for n in files_under(tiny)) == 2 and not any(n.endswith((".web.jpg", ".thumb.jpg")) for n in files_under(tiny))
    assert len(files_under(tiny)) == 4
    # collect went ahead: the originals were verified wherever originals go; the web
    # server holds none and was not waited for
    assert photos_in(inbox.root) == []
    assert q(db_path, "SELECT DISTINCT state FROM files") == [("collected",)]
    status = json.loads(run_imgq("status", "--json").stdout)
    takes = {d["destination"]: d.get("takes") for d in status["archive"]["destinations"]}
    assert takes[str(web)] == "thumb, web" and takes[str(zoe)] == f"everything of {ZOE}"


ROUTER = r'''
import json, pathlib, sys, time
here = pathlib.Path(__file__).parent
mode = (here / "mode").read_text().strip()
file_id, owner, path, taken, kind = sys.argv[1:]
with open(here / "calls", "a") as log:
    log.write(file_id + "\n")
if mode == "fail":
    sys.exit("route-photo: the directory service is down")
if mode == "garbage":
    print("<html>502 Bad Gateway</html>")
elif mode == "unknown":
    print(json.dumps({"destinations": ["/mnt/nowhere"]}))
elif mode == "slow":
    time.sleep(30)
else:
    assert pathlib.Path(path).is_file() and kind == "photo"
    print(json.dumps({"destinations": [str(here / "B")] if owner == "bob" else []}))
'''


def router(tmp_path, mode: str) -> list[str]:
    (tmp_path / "route-photo.py").write_text(ROUTER)
    (tmp_path / "mode").write_text(mode)
    return [sys.executable, str(tmp_path / "route-photo.py")]


def test_a_route_command_sends_one_owners_photos_to_a_second_archive(tmp_path, run_imgq, db_path):
    inbox = make_inbox(tmp_path, ("alice", "bob"))
    argv = router(tmp_path, "good")
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    write_toml(tmp_path, f'destinations = ["{a}"]\nroute_command = {json.dumps(argv)}\n[[route]]\nto = "{b}"\nartifacts = []\n')
    r = run_imgq("run", inbox.root)
    assert r.returncode == 0, r.stderr
    assert len(files_under(a)) == 2 * 3  # the original, thumb and web of each
    assert files_under(b) and all("/bob/" in n for n in files_under(b)) and len(files_under(b)) == len(files_under(a)) // 2
    assert photos_in(inbox.root) == []  # both collected: bob's needed A and B, alice's A
    assert len((tmp_path / "calls").read_text().split()) == 2  # asked once per file, the answer kept
    run_imgq("archive")
    assert len((tmp_path / "calls").read_text().split()) == 2


@pytest.mark.parametrize("mode", ["fail", "garbage", "unknown", "slow"])
def test_a_route_command_that_fails_or_answers_garbage_is_recorded_and_retried_and_nothing_is_lost(tmp_path, run_imgq, db_path, mode):
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("bob",), per_owner=1, size=(160, 120), with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    argv = router(tmp_path, mode)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    write_toml(tmp_path, f'destinations = ["{a}"]\nroute_command = {json.dumps(argv)}\nroute_timeout = 0.5\n[[route]]\nto = "{b}"\nartifacts = []\n')
    r = run_imgq("run", inbox.root)
    assert r.returncode == 1
    assert "route command" in r.stderr
    [(state,)] = q(db_path, "SELECT state FROM files")
    assert state == "processed" and photos_in(inbox.root) == ["bob/IMG_0001.jpg"]
    [(dest, error, kind)] = q(db_path, "SELECT destination, error, error_kind FROM archive_targets WHERE error IS NOT NULL")
    assert dest == "route_command" and kind == "transient"
    assert {"fail": "directory service is down", "garbage": "not JSON", "unknown": "/mnt/nowhere", "slow": "no answer within 0.5s"}[mode] in error
    assert files_under(a) == [] and files_under(b) == []  # nothing half-routed
    status = json.loads(run_imgq("status", "--json").stdout)
    assert any(f["destination"] == "route_command" for f in status["archive"]["failing"])
    # the command is mended: the next archive (after the backoff) routes it, collect empties the inbox
    (tmp_path / "mode").write_text("good")
    assert run_imgq("archive", "--retry-now").returncode == 0
    assert run_imgq("collect").returncode == 0
    assert photos_in(inbox.root) == [] and q(db_path, "SELECT state FROM files") == [("collected",)]
    assert len(files_under(b)) == 3 and len(files_under(a)) == 3


def test_rules_added_later_send_archived_files_there_and_only_those_they_route(tmp_path, run_imgq, db_path):
    from imgq.archive import eligible
    from imgq.ledger.database import DB

    inbox = make_inbox(tmp_path, ("alice", ZOE))
    a, zoe = tmp_path / "A", tmp_path / "zoe"
    a.mkdir(), zoe.mkdir()
    write_toml(tmp_path, f'destinations = ["{a}"]\n')
    assert run_imgq("run", "--no-collect", inbox.root).returncode == 0
    assert q(db_path, "SELECT DISTINCT state FROM files") == [("archived",)]
    cfg = write_toml(tmp_path, f'destinations = ["{a}"]\n[[route]]\nto = "{zoe}"\nowners = ["{ZOE}"]\n[[route]]\nto = "{tmp_path / "web"}"\nartifacts = ["web"]\n')
    r = routing.from_settings(None, load_settings(cfg))
    [(zoes,)] = q(db_path, "SELECT id FROM files WHERE owner = ?", ZOE)
    db = DB(db_path)
    # Zoë's file for her share, and both for the web server added later; nothing else
    assert [f["id"] for f in eligible(db, [str(a), str(zoe)], routing=r)] == [zoes]
    assert len(eligible(db, r.urls, routing=r)) == 2
    (tmp_path / "web").mkdir()
    assert run_imgq("archive").returncode == 0
    assert len(files_under(zoe)) == 3 and len(files_under(tmp_path / "web")) == 2 and eligible(db, r.urls, routing=r) == []
