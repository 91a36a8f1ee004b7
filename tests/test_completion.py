"""Completion of values from the project: recipe names, operation names and file ids, as
`imgq complete-values` gives them and as the generated bash, zsh and fish completions
offer them in real shells."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from imgq import completion, samples
from imgq.config import DEFAULT_RECIPES
from imgq.ops import OPS

from conftest import REPO, imgq_env, imgq_subprocess

BASH = REPO / "completions" / "bash" / "imgq"
ZSH = REPO / "completions" / "zsh" / "_imgq"
FISH = REPO / "completions" / "fish" / "imgq.fish"
VENV_BIN = Path(sys.executable).parent  # where bin/test installed the imgq console script

CONFIG = """\
[recipes.people]
web = "web|faces"
on_no_faces = "tag"

[recipes.posters]
big = "fit:2000x2000"
"""


# --------------------------------------------------------------------------- in-process


def test_parse_reads_the_request_the_scripts_send():
    assert completion.parse(["ids", "--db", "x.db", "--", "al"]) == completion.Request("ids", "al", "x.db", None)
    assert completion.parse(["recipes", "--config=c.toml", "--db=d", "po"]) == completion.Request("recipes", "po", "d", "c.toml")
    assert completion.parse(["ops", "--", "-x"]) == completion.Request("ops", "-x")  # a prefix may start with -
    assert completion.parse(["ops"]) == completion.Request("ops", "")
    for bad in ([], ["nosuchkind"], ["ids", "--db"], ["ids", "--what"], ["ids", "a", "b"], ["ids", "a", "--", "b"]):
        assert completion.parse(bad) is None, bad


def test_operations_complete_the_last_step_of_a_chain():
    assert completion.values("ops") == sorted(OPS)
    bri = sorted(n for n in OPS if n.startswith("bri"))
    assert bri and completion.values("ops", "bri") == bri
    assert completion.values("ops", "fit:120x90|web|bri") == [f"fit:120x90|web|{n}" for n in bri]
    assert completion.values("ops", "nosuchop") == []


def test_recipes_come_from_the_config_in_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGQ_CONFIG", raising=False)
    assert completion.values("recipes") == sorted(DEFAULT_RECIPES)
    (tmp_path / "imgq.toml").write_text(CONFIG)  # ./imgq.toml, as every command finds it
    assert completion.values("recipes") == sorted({*DEFAULT_RECIPES, "people", "posters"})
    assert completion.values("recipes", "po") == ["posters"]
    other = tmp_path / "other.toml"
    other.write_text('[recipes.portraits]\nweb = "web"\n')
    assert completion.values("recipes", "po", config=str(other)) == ["portraits"]
    monkeypatch.setenv("IMGQ_CONFIG", str(other))
    assert completion.values("recipes", "po") == ["portraits"]
    other.write_text("[recipes\n")  # broken: nothing rather than an error
    assert completion.values("recipes") == []


def test_no_database_gives_nothing_and_creates_nothing(tmp_path):
    missing = tmp_path / "nothere.db"
    assert completion.values("ids", db=str(missing)) == []
    assert completion.values("failed-ids", db=str(missing)) == []
    assert list(tmp_path.iterdir()) == []
    assert completion.values("ids", db=str(tmp_path)) == []  # a folder
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    assert completion.values("ids", db=str(text)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- a real project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with imgq.toml and imgq.db made by the real CLI: an inbox scanned,
    enqueued and worked off, so it has files and one failed job (the truncated JPEG)."""
    root = tmp_path_factory.mktemp("project")
    inbox = samples.make_inbox(root / "inbox", per_owner=2, size=(64, 48))
    (root / "imgq.toml").write_text(CONFIG)
    scanned = imgq_subprocess("scan", str(inbox), cwd=root)
    assert scanned.returncode == 0, scanned.stderr
    assert imgq_subprocess("enqueue", cwd=root).returncode == 0
    imgq_subprocess("work", "--drain", "-j", "1", cwd=root)  # exits 1: the truncated JPEG fails
    status = json.loads(imgq_subprocess("status", "--json", cwd=root).stdout)
    failed = sorted({f["file_id"] for f in status["failures"] if f.get("file_id")})
    assert failed, status["failures"]
    # every file the journal knows (scan printed the new ones; duplicates are files too),
    # and the database left as imgq leaves it when nothing runs: no -wal, no -shm
    connection = sqlite3.connect(root / "imgq.db")
    ids = sorted(row[0] for row in connection.execute("SELECT id FROM files"))
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    assert set(scanned.stdout.split()) < set(ids)
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'imgq.db'}{suffix}").unlink(missing_ok=True)
    return {"root": root, "ids": ids, "failed": failed}


def _complete_values(*args, cwd, via_cli=False):
    # via_cli: through the typer command (any word before complete-values, here --debug,
    # skips the fast path in imgq.__main__)
    out = imgq_subprocess(*(["--debug"] if via_cli else []), "complete-values", *args, cwd=cwd)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.splitlines()


@pytest.mark.slow  # the project is made by the real CLI
def test_ids_come_from_the_database_read_only(project, tmp_path):
    root, ids = project["root"], project["ids"]
    db = root / "imgq.db"
    before = (db.stat().st_mtime_ns, db.read_bytes())
    assert _complete_values("ids", cwd=root) == ids
    alice = [i for i in ids if i.startswith("alice_")]
    assert alice and _complete_values("ids", "alice_", cwd=root) == alice
    assert _complete_values("failed-ids", cwd=root) == project["failed"]
    # from elsewhere, with --db (and --db=) or $IMGQ_DB
    assert _complete_values("ids", "--db", str(db), "--", "alice_", cwd=tmp_path) == alice
    assert _complete_values("ids", f"--db={db}", "alice_", cwd=tmp_path) == alice
    out = imgq_subprocess("complete-values", "ids", "alice_", cwd=tmp_path, env={"IMGQ_DB": str(db)})
    assert out.stdout.splitlines() == alice
    # read, never written, and nothing left beside it
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("imgq.db")) == ["imgq.db", "imgq.db.locks"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the project is made by the real CLI
def test_recipes_and_ops_through_the_command(project):
    root = project["root"]
    assert _complete_values("recipes", cwd=root) == sorted({*DEFAULT_RECIPES, "people", "posters"})
    assert _complete_values("ops", "web|sharp", cwd=root) == [f"web|{n}" for n in sorted(OPS) if n.startswith("sharp")]


@pytest.mark.slow  # the project is made by the real CLI
def test_the_fast_answer_is_the_commands_answer_without_the_cli(project):
    root = project["root"]
    for args in (["ids"], ["failed-ids"], ["recipes", "p"], ["ops", "web|b"], ["ids", "--db", "nothere.db"]):
        assert _complete_values(*args, cwd=root) == _complete_values(*args, cwd=root, via_cli=True), args
    # the fast path imports neither the command line nor typer nor rich
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "imgq", "complete-values", "ids"],
                         cwd=root, env=imgq_env(), capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "imgq.completion" in imported
    assert not {m for m in imported if m.split(".")[0] in ("typer", "click", "rich") or m.startswith("imgq.cli")}, imported


def test_any_problem_prints_nothing_and_exits_0(tmp_path):
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "text.db").write_text("hello\n")
    (tmp_path / "bad.toml").write_text("[recipes\n")
    for args in (["ids"], ["ids", "--db", "folder.db"], ["ids", "--db", "text.db"], ["recipes", "--config", "bad.toml"],
                 ["recipes", "--config", "missing.toml"], ["nosuchkind"], ["ids", "--bogus"], []):
        out = imgq_subprocess("complete-values", *args, cwd=tmp_path)
        assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), (args, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "folder.db", "text.db"]  # no imgq.db made


# --------------------------------------------------------------------------- real shells


def _shell_env(**extra) -> dict[str, str]:
    env = imgq_env()
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.update(extra)
    return env


def _bash_complete(words: list[str], cwd, script: Path = BASH) -> list[str]:
    """COMPREPLY of the generated bash completion for the line ``words`` (completing the
    last word), as bash computes it when Tab is pressed."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    driver = f'source {script}\nCOMP_WORDS=({quoted})\nCOMP_CWORD={len(words) - 1}\n_imgq\nprintf "%s\\n" "${{COMPREPLY[@]}}"\n'
    out = subprocess.run(["bash", "-c", driver], cwd=cwd, env=_shell_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.slow  # the project is made by the real CLI
def test_bash_completes_recipes_ops_and_ids(project, tmp_path):
    assert (VENV_BIN / "imgq").exists(), "bin/test installs the imgq console script in .venv"
    root, ids = project["root"], project["ids"]
    assert _bash_complete(["imgq", "enqueue", "--recipe", "p"], cwd=root) == ["people", "posters"]
    assert "people" in _bash_complete(["imgq", "run", "inbox", "-r", ""], cwd=root)
    assert _bash_complete(["imgq", "enqueue", "--op", "'web|sharp"], cwd=root) == [f"web|{n}" for n in sorted(OPS) if n.startswith("sharp")]
    assert _bash_complete(["imgq", "log", ""], cwd=root) == ids
    bob = [i for i in ids if i.startswith("bob_")]
    assert _bash_complete(["imgq", "log", "bob_"], cwd=root) == bob
    assert _bash_complete(["imgq", "retry", ""], cwd=root) == project["failed"]
    # the database and settings named on the line are the ones asked, from anywhere
    db, config = root / "imgq.db", root / "imgq.toml"
    assert _bash_complete(["imgq", "log", "--db", str(db), "bob_"], cwd=tmp_path) == bob
    assert _bash_complete(["imgq", "log", "--db", "=", str(db), "bob_"], cwd=tmp_path) == bob  # --db=PATH, as bash splits it
    assert _bash_complete(["imgq", "--db", str(db), "log", "bob_"], cwd=tmp_path) == bob  # before the command
    assert _bash_complete(["imgq", "enqueue", "--config", str(config), "-r", "pe"], cwd=tmp_path) == ["people"]
    assert _bash_complete(["imgq", "log", ""], cwd=tmp_path) == []  # no database here: nothing, and none made
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not shutil.which("fish"), reason="fish not installed (bin/test installs it)")
@pytest.mark.slow  # the project is made by the real CLI
def test_fish_completes_recipes_and_ids(project, tmp_path):
    def complete(line, cwd):
        out = subprocess.run(["fish", "--no-config", "-c", f"source {FISH}; complete -C {json.dumps(line)}"],
                             cwd=cwd, env=_shell_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [ln.split("\t")[0] for ln in out.stdout.splitlines()]

    root, ids = project["root"], project["ids"]
    assert complete("imgq enqueue --recipe p", root) == ["people", "posters"]
    assert complete("imgq log bob_", root) == [i for i in ids if i.startswith("bob_")]
    assert complete(f"imgq log --db {root / 'imgq.db'} bob_", tmp_path) == [i for i in ids if i.startswith("bob_")]
    assert complete(f"imgq --db {root / 'imgq.db'} log bob_", tmp_path) == [i for i in ids if i.startswith("bob_")]


def _zsh_tab(line: str, cwd: Path, expect: str, timeout: float = 30.0) -> str:
    """What an interactive zsh (on a pseudo-terminal, completion from completions/zsh
    through $fpath and compinit) shows after ``line`` and a Tab: read until ``expect``
    appears, or everything it drew in ``timeout`` seconds."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive zsh without any user's configuration
        os.chdir(cwd)
        os.execvpe("zsh", ["zsh", "-f", "-i"], dict(_shell_env(), HOME=str(cwd), TERM="dumb"))
    # a wide terminal, so that a long line is drawn as it is, not wrapped and redrawn
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
    seen = b""
    try:
        os.write(fd, f"PS1='> '; fpath=({ZSH.parent} $fpath); autoload -U compinit; compinit -u -D\n".encode())
        os.write(fd, line.encode() + b"\t")
        deadline = time.monotonic() + timeout
        while expect.encode() not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return seen.decode(errors="replace")


@pytest.mark.slow  # the project is made by the real CLI; an interactive zsh on a pty
@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh not installed (bin/test installs it)")
def test_zsh_completes_recipes_ops_and_ids(project, tmp_path):
    root, ids = project["root"], project["ids"]
    posters = "imgq enqueue --recipe posters"
    assert posters in _zsh_tab("imgq enqueue --recipe pos", root, posters)
    sharp = sorted(n for n in OPS if n.startswith("sharp"))
    assert len(sharp) == 1  # one candidate: Tab writes it out
    chain = f"imgq enqueue --op 'web|{sharp[0]}'"
    assert chain in _zsh_tab("imgq enqueue --op 'web|sharp", root, chain)
    carol = [i for i in ids if i.startswith("carol_")]
    common = os.path.commonprefix(carol)
    assert len(common) > len("carol_")
    assert f"imgq log {common}" in _zsh_tab("imgq log carol_", root, f"imgq log {common}")
    # the --db on the line is the database asked, from anywhere
    failed = project["failed"][0]
    line = f"imgq retry --db {root / 'imgq.db'} "
    assert line + failed in _zsh_tab(line + failed[:8], tmp_path, line + failed)


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh not installed (bin/test installs it)")
def test_zsh_loads_the_completion_with_its_values_function():
    # zsh's completion widgets need a terminal to drive; this checks the file autoloads
    # from $fpath and defines the function that asks imgq for values
    script = f"fpath=({ZSH.parent} $fpath); autoload -U +X _imgq && whence -w _imgq && functions _imgq | grep -c 'complete-values'"
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("_imgq: function"), out.stdout + out.stderr
