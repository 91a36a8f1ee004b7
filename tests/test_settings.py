"""Where imgq takes its settings from, and the options every command shares.

- Global options go where people put them: `imgq --db x status` as well as `imgq status
  --db x` (and --config, -v, -q, --debug); given both places, the one after the command
  wins. `imgq` still builds only the command named, whatever root options precede it.
- -q says only what went wrong; -v says more (a line per item, where the settings and
  the database came from, the summary off a terminal). stdout is the same either way.
- The settings file is the first found of --config, $IMGQ_CONFIG, ./imgq.toml,
  $XDG_CONFIG_HOME/imgq/imgq.toml (else ~/.config/imgq/imgq.toml), /etc/imgq/imgq.toml;
  `imgq config` shows every setting and where it came from.

Everything runs the real CLI in a subprocess on real files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from imgq import cli
from imgq.ledger.database import lock_path
from conftest import imgq_env, imgq_subprocess
from test_terminal import run_in_tty


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _settings(r) -> dict[str, dict]:
    """`imgq config --json` output by key."""
    assert r.returncode == 0, r.stderr
    return {row["key"]: row for row in _json_lines(r.stdout)}


# -- 1. global options before the command -------------------------------------------------------


def test_db_before_the_command_is_the_database_of_the_command(tmp_path, inbox):
    made = imgq_subprocess("--db", "photos.db", "scan", inbox, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "photos.db").is_file() and not (tmp_path / "imgq.db").exists()
    before = imgq_subprocess("--db", "photos.db", "status", "--json", cwd=tmp_path)
    after = imgq_subprocess("status", "--json", "--db", "photos.db", cwd=tmp_path)
    equals = imgq_subprocess("--db=photos.db", "status", "--json", cwd=tmp_path)
    for r in (before, after, equals):
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["files"]["seen"] == len(made.stdout.split())


def test_config_before_the_command_is_the_settings_of_the_command(tmp_path, inbox):
    (tmp_path / "site.toml").write_text('default_owner = "nobody"\n')
    r = imgq_subprocess("--config", "site.toml", "scan", inbox, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(i.startswith("nobody_") for i in r.stdout.split()), r.stdout  # the photo at the inbox root


def test_the_option_after_the_command_wins(tmp_path, inbox):
    assert imgq_subprocess("--db", "real.db", "scan", inbox, cwd=tmp_path).returncode == 0
    wins = imgq_subprocess("--db", "missing.db", "status", "--db", "real.db", cwd=tmp_path)
    assert wins.returncode == 0, wins.stderr
    loses = imgq_subprocess("--db", "real.db", "status", "--db", "missing.db", cwd=tmp_path)
    assert loses.returncode == 2 and "missing.db" in loses.stderr, loses.stderr
    (tmp_path / "one.toml").write_text("jpeg_quality = 70\n")
    (tmp_path / "two.toml").write_text("jpeg_quality = 95\n")
    r = imgq_subprocess("--config", "one.toml", "config", "--config", "two.toml", "--json", cwd=tmp_path)
    assert _settings(r)["jpeg_quality"]["value"] == 95
    r = imgq_subprocess("--config", "one.toml", "config", "--json", cwd=tmp_path)
    assert _settings(r)["jpeg_quality"]["value"] == 70


def test_help_says_the_option_after_the_command_wins(tmp_path):
    r = imgq_subprocess("--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "the one after the command wins" in text
    for option in ("--db", "--config", "--verbose", "--quiet", "--debug"):
        assert option in r.stdout


def test_debug_before_the_command_shows_the_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text("no_such_setting = 1\n")
    plain = imgq_subprocess("--config", "bad.toml", "config", cwd=tmp_path)
    debug = imgq_subprocess("--debug", "--config", "bad.toml", "config", cwd=tmp_path)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert "no_such_setting" in plain.stderr


def test_the_root_options_are_the_ones_skipped_to_find_the_command():
    """_command_in must know every root option, or `imgq --new-option x scan` would
    build every command (or take the option's value for the command)."""
    root = typer.main.get_command(cli.build_app(only="recipes"))
    flags, valued = set(), set()
    for p in root.params:
        if p.name in ("version", "help"):
            continue
        (flags if p.is_flag else valued).update(p.opts + p.secondary_opts)
    assert flags == cli.ROOT_FLAGS
    assert valued == cli.ROOT_VALUED


@pytest.mark.parametrize(
    "argv, command",
    [
        (["status"], "status"),
        (["--db", "x.db", "status"], "status"),
        (["--db", "status", "log", "a"], "log"),  # a database file called "status"
        (["--db=x.db", "--config", "c.toml", "-v", "--debug", "report"], "report"),
        (["-q", "hosts", "check"], "hosts"),
        (["--quiet", "--config=c.toml", "config", "--path"], "config"),
        (["--no-such-option", "status"], None),  # in doubt: every command, and click says why
        (["--db"], None),
    ],
)
def test_the_command_is_found_after_root_options(argv, command):
    assert cli._command_in(argv) == command


@pytest.mark.parametrize("argv", [["recipes"], ["--db", "x.db", "-q", "recipes"], ["--config=none.toml", "--verbose", "--debug", "recipes", "--ops"]])
def test_only_the_named_command_is_loaded_with_root_options_before_it(tmp_path, argv):
    """The speed trick: `imgq scan` does not import the other commands (work's fleet
    pulls in the SSH stack); root options before the command must not defeat it."""
    (tmp_path / "none.toml").write_text("")
    probe = (
        "import sys\nfrom imgq import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, sorted(m for m in sys.modules if m.startswith('imgq.cli.')), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=imgq_env(), capture_output=True, text=True, timeout=60)
    code, loaded = r.stderr.strip().splitlines()[-1].split(" ", 1)
    assert code == "0", r.stderr
    assert "imgq.cli.recipes" in loaded
    for other in ("imgq.cli.work", "imgq.cli.scan", "imgq.cli.status", "imgq.cli.hosts"):
        assert other not in loaded, (other, loaded)


# -- 2. -v and -q ---------------------------------------------------------------------------------


def _busy_inbox(inbox: Path) -> Path:
    """The sample inbox plus one file still being written (a note) and one that is not an
    image (a problem: named on stderr whatever the verbosity)."""
    (inbox / "alice" / "fresh.jpg").write_bytes((inbox / "alice" / "IMG_0001.jpg").read_bytes()[:2000])
    (inbox / "bob" / "notes.jpg").write_text("not a photo\n")
    old = os.stat(inbox / "alice" / "IMG_0001.jpg").st_mtime
    os.utime(inbox / "bob" / "notes.jpg", (old, old))
    return inbox


@pytest.mark.parametrize("where", ["before", "after"])
def test_scan_quiet_and_verbose(tmp_path, inbox, where):
    _busy_inbox(inbox)

    def scan(db: str, *flags: str):
        # --settle 60: the sample photos are 2 minutes old, fresh.jpg stays fresh throughout
        args = [*flags, "scan", inbox, "--settle", "60", "--db", db] if where == "before" else ["scan", inbox, "--settle", "60", "--db", db, *flags]
        r = imgq_subprocess(*args, cwd=tmp_path)
        assert r.returncode == 1, r.stderr  # the non-image failed
        return r

    normal, quiet, verbose = scan("n.db"), scan("q.db", "-q"), scan("v.db", "--verbose")
    assert normal.stdout and normal.stdout == quiet.stdout == verbose.stdout
    problem = "notes.jpg: not an image"
    # normal: the problem and the note; no summary off a terminal
    assert problem in normal.stderr
    assert "still being written" in normal.stderr
    assert "scan:" not in normal.stderr
    # -q: the problem alone
    assert [line for line in quiet.stderr.splitlines()] == [line for line in normal.stderr.splitlines() if problem in line]
    # -v: everything, plus where things came from, a line per file, and the summary
    assert problem in verbose.stderr and "still being written" in verbose.stderr
    assert "imgq: settings: the defaults" in verbose.stderr
    assert "imgq: database: v.db (--db)" in verbose.stderr
    assert f"imgq: seen {inbox / 'carol' / 'IMG_0001.jpg'}" in verbose.stderr
    assert f"imgq: duplicate {inbox / 'bob' / 'copy of IMG_0001.jpg'} (same bytes as" in verbose.stderr
    assert "still being written: " + str(inbox / "alice" / "fresh.jpg") in verbose.stderr
    assert "scan: " in verbose.stderr and " new, 1 duplicate, 1 failed" in verbose.stderr


def test_work_quiet_and_verbose(tmp_path, inbox):
    ids = imgq_subprocess("scan", inbox, cwd=tmp_path).stdout
    jobs = _json_lines(imgq_subprocess("enqueue", "--json", "-", input=ids, cwd=tmp_path).stdout)
    for db in ("q.db", "v.db"):
        (tmp_path / db).write_bytes((tmp_path / "imgq.db").read_bytes())  # the same queue twice
    quiet = imgq_subprocess("-q", "work", "--drain", "-j", "1", "--db", "q.db", cwd=tmp_path)
    verbose = imgq_subprocess("work", "--drain", "-j", "1", "--db", "v.db", "-v", cwd=tmp_path)
    assert quiet.returncode == verbose.returncode == 1  # the truncated JPEG
    assert sorted(quiet.stdout.split()) == sorted(verbose.stdout.split()) and quiet.stdout
    assert [line for line in quiet.stderr.splitlines()] == [line for line in quiet.stderr.splitlines() if "failed: truncated JPEG" in line]
    assert quiet.stderr
    done = [line for line in verbose.stderr.splitlines() if line.startswith("imgq: job ") and line.endswith(" done")]
    assert len(done) == sum(len(j["jobs"]) for j in jobs) - 1
    assert "failed: truncated JPEG" in verbose.stderr
    assert "work: " in verbose.stderr and " done, 1 failed" in verbose.stderr


def test_archive_and_collect_verbose_name_each_copy_and_deletion(tmp_path, inbox):
    ids = imgq_subprocess("scan", inbox, cwd=tmp_path).stdout
    imgq_subprocess("enqueue", "-", input=ids, cwd=tmp_path)
    imgq_subprocess("work", "--drain", "-j", "1", cwd=tmp_path)
    (tmp_path / "dest").mkdir()
    archived = imgq_subprocess("-v", "archive", "--to", "dest", cwd=tmp_path)
    assert archived.returncode == 0, archived.stderr
    copied = [line for line in archived.stderr.splitlines() if line.startswith("imgq: ") and ": copied " in line]
    on_disk = [p for p in (tmp_path / "dest").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(copied) == len(on_disk) > 0
    for p in on_disk:
        assert any(line.endswith(str(p)) for line in copied), p
    collected = imgq_subprocess("collect", "--to", "dest", "--verbose", cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr
    deleted = [line for line in collected.stderr.splitlines() if line.startswith("imgq: deleted ")]
    assert len(deleted) == len(collected.stdout.split()) > 0
    assert "collect: " in collected.stderr and " deleted" in collected.stderr
    quiet = imgq_subprocess("collect", "--to", "dest", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_quiet_silences_a_step_that_finds_its_lock_taken(tmp_path, inbox):
    """Another run of the step holds the lock: exit 0 with a note, none with -q."""
    assert imgq_subprocess("scan", inbox, cwd=tmp_path).returncode == 0
    fd = os.open(lock_path(tmp_path / "imgq.db", "scan"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        normal = imgq_subprocess("scan", inbox, cwd=tmp_path)
        quiet = imgq_subprocess("-q", "scan", inbox, cwd=tmp_path)
    finally:
        os.close(fd)
    assert normal.returncode == quiet.returncode == 0
    assert "another `imgq scan` is running" in normal.stderr
    assert quiet.stderr == ""


def test_quiet_keeps_the_terminal_free_of_summaries_and_progress(tmp_path, inbox):
    normal = run_in_tty("scan", inbox, "--db", "n.db", cwd=tmp_path)
    quiet = run_in_tty("-q", "scan", inbox, "--db", "q.db", cwd=tmp_path)
    assert normal.returncode == quiet.returncode == 0
    assert normal.stdout == quiet.stdout != ""
    assert "scan: " in normal.text
    assert quiet.text.strip() == "", quiet.text
    imgq_subprocess("enqueue", "--db", "q.db", cwd=tmp_path)
    worked = run_in_tty("work", "--drain", "-j", "1", "--db", "q.db", "--quiet", cwd=tmp_path)
    assert worked.returncode == 1  # the truncated JPEG
    assert worked.stdout.split()
    assert [line for line in worked.text.splitlines() if line.strip()] == [line for line in worked.text.splitlines() if "failed: truncated JPEG" in line]


def test_verbose_and_quiet_together_are_a_usage_error(tmp_path):
    for args in (["-v", "-q", "config"], ["config", "-q", "--verbose"]):
        r = imgq_subprocess(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == ["imgq: error: -v/--verbose and -q/--quiet cannot be used together"]
    # one before the command and one after: the one after wins
    r = imgq_subprocess("-q", "config", "-v", cwd=tmp_path)
    assert r.returncode == 0 and "imgq: settings: " in r.stderr


# -- 3. where the settings file is found ---------------------------------------------------------

SYSTEM = Path("/etc/imgq/imgq.toml")


@contextlib.contextmanager
def _system_config(text: str):
    """/etc/imgq/imgq.toml holding ``text`` for the duration, then exactly what was there
    before (a file, or nothing, and the folder only if it was there)."""
    folder_existed = SYSTEM.parent.is_dir()
    old = SYSTEM.read_bytes() if SYSTEM.is_file() else None
    SYSTEM.parent.mkdir(parents=True, exist_ok=True)
    try:
        SYSTEM.write_text(text)
        yield SYSTEM
    finally:
        if old is not None:
            SYSTEM.write_bytes(old)
        else:
            SYSTEM.unlink(missing_ok=True)
            if not folder_existed:
                SYSTEM.parent.rmdir()


def _can_write_etc() -> bool:
    parent = SYSTEM.parent if SYSTEM.parent.is_dir() else SYSTEM.parent.parent
    return os.access(parent, os.W_OK) and (not SYSTEM.exists() or os.access(SYSTEM, os.W_OK))


def _found(tmp_path, env) -> tuple[int, str, dict]:
    """What `imgq config --path` says and where `imgq config` says jpeg_quality came from."""
    r = imgq_subprocess("config", "--path", cwd=tmp_path / "work", env=env)
    settings = _settings(imgq_subprocess("config", "--json", cwd=tmp_path / "work", env=env))
    return r.returncode, r.stdout.strip(), settings["jpeg_quality"]


@pytest.mark.skipif(not _can_write_etc(), reason="writing /etc/imgq/imgq.toml needs root (CI runs as root)")
def test_the_first_settings_file_found_wins_in_the_documented_order(tmp_path):
    """A file in every place; each removed in turn lets the next one show through. Each
    file holds the default jpeg_quality (so a test running meanwhile is not disturbed by
    the one in /etc) and is told apart by the path `imgq config` names as its source."""
    (tmp_path / "work").mkdir()
    text = "jpeg_quality = 85\n"
    places = {
        "--config": tmp_path / "given.toml",
        "$IMGQ_CONFIG": tmp_path / "env.toml",
        "./imgq.toml": tmp_path / "work" / "imgq.toml",
        "$XDG_CONFIG_HOME/imgq/imgq.toml": tmp_path / "xdg" / "imgq" / "imgq.toml",
    }
    for path in places.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home"), "IMGQ_CONFIG": str(places["$IMGQ_CONFIG"])}
    with _system_config(text):
        r = imgq_subprocess("config", "--path", "--config", places["--config"], cwd=tmp_path / "work", env=env)
        assert r.stdout.strip() == str(places["--config"])
        seen = []
        for name in ("$IMGQ_CONFIG", "./imgq.toml", "$XDG_CONFIG_HOME/imgq/imgq.toml"):
            code, path, quality = _found(tmp_path, env)
            assert (code, path, quality["source"]) == (0, str(places[name]), str(places[name])), name
            seen.append(path)
            if name == "$IMGQ_CONFIG":
                del env["IMGQ_CONFIG"]
            else:
                places[name].unlink()
        code, path, quality = _found(tmp_path, env)
        assert (code, path, quality["source"]) == (0, str(SYSTEM), str(SYSTEM))
        found_as = json.loads(imgq_subprocess("config", "--path", "--json", cwd=tmp_path / "work", env=env).stdout)
        assert found_as == {"path": str(SYSTEM), "found_as": str(SYSTEM)}
    code, path, quality = _found(tmp_path, env)
    assert (code, path, quality["source"]) == (1, "", "default")


def test_the_user_file_is_under_home_without_xdg_config_home(tmp_path):
    (tmp_path / "work").mkdir()
    user = tmp_path / "home" / ".config" / "imgq" / "imgq.toml"
    user.parent.mkdir(parents=True)
    user.write_text("jpeg_quality = 77\n")
    for xdg in (None, "relative/path"):  # the XDG spec: a relative XDG_CONFIG_HOME is ignored
        env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": xdg}
        code, path, quality = _found(tmp_path, env)
        if SYSTEM.is_file() and path == str(SYSTEM):  # pragma: no cover - a machine's own /etc file
            pytest.skip("this machine has /etc/imgq/imgq.toml")
        assert (code, path, quality["value"], quality["source"]) == (0, str(user), 77, str(user))
    # with XDG_CONFIG_HOME set, ~/.config is not looked at
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert _found(tmp_path, env)[1] != str(user)


def test_a_missing_file_named_by_imgq_config_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "imgq.toml").write_text("jpeg_quality = 70\n")
    r = imgq_subprocess("config", cwd=tmp_path / "work", env={"IMGQ_CONFIG": str(tmp_path / "nope.toml")})
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"imgq: error: config file {tmp_path / 'nope.toml'} does not exist"]


# -- 4. imgq config -------------------------------------------------------------------------------


def test_config_shows_every_setting_and_its_source(tmp_path):
    (tmp_path / "imgq.toml").write_text('jpeg_quality = 90\ndestinations = ["/mnt/backup"]\n[recipes.people]\nweb = "web|faces"\n')
    r = imgq_subprocess("config", cwd=tmp_path, env={"IMGQ_DB": str(tmp_path / "env.db")})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"# settings file: {tmp_path / 'imgq.toml'} (from ./imgq.toml)"
    assert f'jpeg_quality = 90  # {tmp_path / "imgq.toml"}' in lines
    assert f'db = "{tmp_path / "env.db"}"  # $IMGQ_DB' in lines
    assert "max_attempts = 0  # default" in lines and "retry_for = 86400.0  # default" in lines
    assert 'recipes.default = { thumb = "thumb", web = "web" }  # built-in' in lines
    assert f'recipes.people = {{ web = "web|faces" }}  # {tmp_path / "imgq.toml"}' in lines
    # the output is TOML: read back, it holds the values in force
    data = tomllib.loads(r.stdout)
    assert data["jpeg_quality"] == 90 and data["destinations"] == ["/mnt/backup"] and data["settle"] == 2.0
    assert data["recipes"]["people"] == {"web": "web|faces"}
    # --json: one object per setting, the same values and sources
    rows = _settings(imgq_subprocess("config", "--json", "--db", "cli.db", cwd=tmp_path, env={"IMGQ_DB": "env.db"}))
    assert rows["db"] == {"key": "db", "value": "cli.db", "source": "--db"}
    assert rows["jpeg_quality"]["source"] == str(tmp_path / "imgq.toml")
    assert rows["store"] == {"key": "store", "value": "cli-store", "source": "default (beside the database)"}
    assert rows["recipes.people"]["value"] == {"web": "web|faces"}
    assert set(data) == {k.split(".")[0] for k in rows}
    # no database is opened, or made
    assert not any(p.suffix == ".db" for p in tmp_path.iterdir())


def test_config_without_a_settings_file(tmp_path):
    if SYSTEM.is_file():
        pytest.skip("this machine has /etc/imgq/imgq.toml")
    r = imgq_subprocess("config", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith("# settings file: none (the defaults; looked for ./imgq.toml, ")
    assert all(line.endswith(("# default", "# built-in", "(beside the database)")) for line in r.stdout.splitlines()[1:])
    path = imgq_subprocess("config", "--path", cwd=tmp_path)
    assert path.returncode == 1 and path.stdout == ""
    assert "no settings file" in path.stderr
    quiet = imgq_subprocess("-q", "config", "--path", cwd=tmp_path)
    assert quiet.returncode == 1 and quiet.stdout == quiet.stderr == ""


def test_config_refuses_a_bad_settings_file(tmp_path):
    (tmp_path / "imgq.toml").write_text("jpeg_quality = 'high'\n")
    r = imgq_subprocess("config", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"imgq: error: imgq.toml: jpeg_quality = 'high' is not a valid int"]
    assert r.stdout == ""
