"""Every command against the mistakes a user makes first: a missing database, a folder or
a file that is not SQLite given as --db, an unknown id, a bad option value. Each gives
one line on stderr (`imgq: error: ...` naming what is wrong), no traceback, and the exit
code of the README's table; a command that only reads never creates a database.

The commands come from the typer app itself, so a new command is covered (or fails the
classification test below) without anyone remembering to add it here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from imgq import cli
from conftest import imgq_env, imgq_subprocess


def _commands() -> dict:
    """Every command of the real CLI by its words ("status", "hosts check")."""
    root = typer.main.get_command(cli.build_app())
    found: dict = {}

    def walk(group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            words = f"{prefix}{name}"
            if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance)
                walk(cmd, words + " ")
            else:
                found[words] = cmd

    walk(root, "")
    return found


# `imgq complete-values` (hidden) is what the shell completions ask on every Tab: by
# design it answers every problem with nothing and exit 0, never a line on the terminal
# (tests/test_completion.py checks that)
SILENT = {"complete-values"}
COMMANDS = {words: cmd for words, cmd in _commands().items() if words not in SILENT}

# Commands that record something create the database when it is missing; the others only
# read it (or act on what it already holds) and refuse a missing one. README says the same.
CREATES = {"scan", "enqueue", "work", "archive", "run"}
NEEDS = {"status", "log", "retry", "report", "collect", "publish", "export", "backup"}
# Arguments that make each command run for real once its database is fine.
ARGS = {
    "scan": ["inbox"],
    "enqueue": [],
    "work": ["--drain", "-j", "1"],
    "status": [],
    "log": ["alice_1700000000_IMG_0001.jpg"],
    "retry": [],
    "report": ["--since", "1h"],
    "publish": ["site"],
    "archive": ["--to", "dest"],
    "collect": ["--to", "dest"],
    "run": ["inbox", "--to", "dest"],
    "export": ["-r", "default", "--to", "out"],
    "backup": ["--to", "dest"],
}


def _has_db(cmd) -> bool:
    return any("--db" in p.opts for p in cmd.params)


def _takes_ids(cmd) -> bool:
    return any(p.param_type_name == "argument" and "ID" in (p.metavar or "") for p in cmd.params)


TAKES_IDS = sorted(w for w, c in COMMANDS.items() if _takes_ids(c))


# Commands whose --db only names the database they report on: they never open it
# (`imgq config` shows which database a command would use, and why).
NAMES_ONLY = {"config", "restore"}
DB_COMMANDS = sorted(w for w, c in COMMANDS.items() if _has_db(c) and w not in NAMES_ONLY)


def _assert_one_error_line(r, *names: str) -> None:
    lines = r.stderr.splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("imgq: error: "), r.stderr
    for n in names:
        assert n in lines[0], (n, r.stderr)


def _run(tmp_path: Path, words: str, *args, **kw):
    (tmp_path / "inbox").mkdir(exist_ok=True)
    (tmp_path / "dest").mkdir(exist_ok=True)
    return imgq_subprocess(*words.split(), *args, cwd=tmp_path, **kw)


def test_every_command_with_a_database_is_classified():
    """A new command must say whether it may create a database (and get its arguments here)."""
    assert set(DB_COMMANDS) == CREATES | NEEDS
    assert set(ARGS) == CREATES | NEEDS
    assert set(TAKES_IDS) == {"log", "retry", "enqueue", "archive", "collect", "export"}


@pytest.mark.parametrize("words", sorted(NEEDS))
def test_a_reading_command_refuses_a_missing_database(tmp_path, words):
    r = _run(tmp_path, words, *ARGS[words])
    assert r.returncode == 2, (r.stdout, r.stderr)
    _assert_one_error_line(r, str(tmp_path / "imgq.db"))
    assert r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["dest", "inbox"], "nothing may be created"


def test_a_reading_command_names_the_database_given_by_imgq_db(tmp_path):
    r = _run(tmp_path, "status", env={"IMGQ_DB": str(tmp_path / "elsewhere.db")})
    assert r.returncode == 2
    _assert_one_error_line(r, str(tmp_path / "elsewhere.db"), "IMGQ_DB")


@pytest.mark.parametrize("words", sorted(CREATES))
def test_a_recording_command_creates_a_missing_database(tmp_path, words):
    r = _run(tmp_path, words, *ARGS[words])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "imgq.db").is_file()


@pytest.mark.parametrize("words", DB_COMMANDS)
def test_a_directory_as_database(tmp_path, words):
    (tmp_path / "photos.db").mkdir()
    r = _run(tmp_path, words, *ARGS[words], "--db", "photos.db")
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, "photos.db", "folder")


@pytest.mark.parametrize("words", DB_COMMANDS)
def test_a_file_that_is_not_sqlite_as_database(tmp_path, words):
    (tmp_path / "notes.txt").write_text("shopping list\n" * 200)
    r = _run(tmp_path, words, *ARGS[words], "--db", "notes.txt")
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, "notes.txt", "not an SQLite database")
    assert (tmp_path / "notes.txt").read_text() == "shopping list\n" * 200


@pytest.mark.parametrize("words", sorted(CREATES))
def test_a_database_that_cannot_be_created(tmp_path, words):
    """A folder that does not exist, and one that is not a folder."""
    (tmp_path / "afile").write_text("x")
    for where in ("nosuchdir/imgq.db", "afile/imgq.db"):
        r = _run(tmp_path, words, *ARGS[words], "--db", where)
        assert r.returncode == 2, r.stderr
        _assert_one_error_line(r, where)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("words", ["scan", "status"])
def test_an_unwritable_database_path(tmp_path, words):
    """/proc refuses new files even to root: the cause is named, not a traceback."""
    r = _run(tmp_path, words, *ARGS[words], "--db", "/proc/imgq.db")
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, "/proc/imgq.db")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a read-only mount needs root and mount(8)")
def test_a_database_on_a_read_only_file_system(tmp_path):
    """The usual unwritable place (root is refused too): a new database, and an existing one."""
    ro = tmp_path / "ro"
    ro.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount here")
    try:
        assert _run(tmp_path, "scan", "inbox", "--db", ro / "old.db").returncode == 0
        assert subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True).returncode == 0
        for words, db in (("scan", "new.db"), ("status", "new.db"), ("scan", "old.db")):
            r = _run(tmp_path, words, *ARGS[words], "--db", ro / db)
            assert r.returncode == 2, (words, db, r.stderr)
            _assert_one_error_line(r, str(ro / db))
        r = _run(tmp_path, "scan", "inbox", "--db", ro / "new.db")
        assert "Read-only file system" in r.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.fixture
def empty_db(tmp_path) -> Path:
    """A real, empty imgq database in tmp_path (made by a scan of an empty inbox)."""
    r = _run(tmp_path, "scan", "inbox")
    assert r.returncode == 0, r.stderr
    return tmp_path / "imgq.db"


@pytest.mark.parametrize("words", TAKES_IDS)
def test_an_unknown_id(tmp_path, empty_db, words):
    extra = {"archive": ["--to", "dest"], "collect": ["--to", "dest"], "export": ["-r", "default", "--to", "out"]}.get(words, [])
    r = _run(tmp_path, words, *extra, "nosuchid_123")
    assert r.returncode == 2, (r.stdout, r.stderr)
    _assert_one_error_line(r, "nosuchid_123")
    assert r.stdout == ""


def test_an_unknown_id_from_stdin(tmp_path, empty_db):
    r = _run(tmp_path, "retry", "-", input="nosuchid_123\n")
    assert r.returncode == 2
    _assert_one_error_line(r, "nosuchid_123")


def test_an_unknown_job_number(tmp_path, empty_db):
    r = _run(tmp_path, "retry", "4711")
    assert r.returncode == 2
    _assert_one_error_line(r, "4711")


def _numeric(param) -> bool:
    described = getattr(param, "type_descriptor", None)  # typer >= 0.2x
    if described is not None:
        return described.annotation in (int, float)
    return param.type.name.startswith(("integer", "float"))  # click's own parameter types


def _bad_option(cmd) -> list[str]:
    """A value the option's type refuses (a number option given a word), or an option
    that does not exist."""
    for p in cmd.params:
        if p.param_type_name == "option" and _numeric(p):
            return [p.opts[0], "lots"]
    return ["--no-such-option"]


@pytest.mark.parametrize("words", sorted(COMMANDS))
def test_a_bad_option_value(tmp_path, words):
    r = _run(tmp_path, words, *ARGS.get(words, []), *_bad_option(COMMANDS[words]))
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, _bad_option(COMMANDS[words])[0])
    assert f"imgq {words} --help" in r.stderr
    assert not (tmp_path / "imgq.db").exists()


def test_an_operation_that_does_not_exist_is_a_usage_error(tmp_path, empty_db):
    r = _run(tmp_path, "enqueue", "--op", "web|nosuchop")
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, "nosuchop")


def test_a_recipe_that_does_not_exist_is_a_usage_error(tmp_path, empty_db):
    r = _run(tmp_path, "enqueue", "--recipe", "nosuchrecipe")
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r, "nosuchrecipe")


def test_only_the_database_and_one_lock_folder_sit_beside_it(tmp_path, inbox):
    """After every step has run in one folder: imgq.db, its -wal/-shm, one lock folder, and
    the artifact store (the step's output, documented as <db stem>-store); no lock files."""
    work = tmp_path / "w"
    work.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    for args in (
        ["scan", str(inbox)],
        ["enqueue"],
        ["work", "--drain", "-j", "1"],
        ["archive", "--to", str(dest)],
        ["collect", "--to", str(dest)],
        ["publish", str(tmp_path / "site")],
        ["retry"],
        ["status"],
        ["run", str(inbox), "--to", str(dest)],
    ):
        r = imgq_subprocess(*args, cwd=work)
        assert r.returncode in (0, 1), (args, r.stderr)
        assert "Traceback" not in r.stderr
    beside = set(os.listdir(work))
    assert beside <= {"imgq.db", "imgq.db-wal", "imgq.db-shm", "imgq.db.locks", "imgq-store"}, beside
    assert (work / "imgq.db.locks").is_dir()


@pytest.mark.parametrize("args", [["recipes", "--ops"], ["recipes", "--json"], ["status"], ["status", "--json"]])
def test_a_reader_that_goes_away_is_not_an_error(tmp_path, args, empty_db):
    """`imgq … | head -1`: the reader closes the pipe; imgq stops quietly with 0, as the
    README's table has it (not 1, not a BrokenPipeError on stderr)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write meets EPIPE
    proc = subprocess.run([sys.executable, "-m", "imgq", *args], cwd=tmp_path, env=imgq_env(), stdout=write,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60)
    os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
