"""The Unix contract in a real terminal: stdout stays pure data while stderr is a
terminal (where progress bars and summaries go), summaries people read are formatted
(no Python reprs, no raw epochs, no control characters), and --help reads like a manual
(no internal type names, no summary cut with "...").

Each command runs for real under a pseudo-terminal: stdin and stderr are the pty's
slave end, stdout a pipe; the test reads both the pipe and the pty's master end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass

import pytest

from conftest import imgq_env, imgq_subprocess

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class TtyRun:
    returncode: int
    stdout: str  # the pipe: data only
    screen: str  # what the terminal received (escape codes kept)

    @property
    def text(self) -> str:
        """The terminal's bytes without escape codes or carriage returns."""
        return ESCAPE.sub("", self.screen).replace("\r", "")


def run_in_tty(*args, cwd, env=None, timeout=120, stdout_tty=False) -> TtyRun:
    """``python -m imgq ARGS`` with stdin and stderr on a fresh 120x40 pty, stdout a pipe
    (or the pty too, with ``stdout_tty``: then ``screen`` holds it)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    environment = imgq_env({"TERM": "xterm-256color", "NO_COLOR": None, "COLUMNS": None, "LINES": None, **(env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgq", *map(str, args)],
        cwd=cwd, env=environment, stdin=slave, stderr=slave, stdout=slave if stdout_tty else subprocess.PIPE, start_new_session=True,
    )
    os.close(slave)
    out, screen = b"", b""
    pipe = proc.stdout.fileno() if proc.stdout else None
    open_fds = [master] + ([pipe] if proc.stdout else [])
    try:
        while open_fds:
            ready, _, _ = select.select(open_fds, [], [], timeout)
            if not ready:
                raise TimeoutError(f"imgq {' '.join(map(str, args))}: no output for {timeout}s")
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the last holder of the slave end is gone
                    chunk = b""
                if not chunk:
                    open_fds.remove(fd)
                elif fd == master:
                    screen += chunk
                else:
                    out += chunk
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.stdout:
            proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
    return TtyRun(proc.returncode, out.decode("utf-8", "replace"), screen.decode("utf-8", "replace"))


@pytest.fixture
def queued(tmp_path, inbox):
    """The inbox scanned and enqueued (default recipe): new ids and the job count."""
    scanned = imgq_subprocess("scan", str(inbox), cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    ids = scanned.stdout.split()
    queued = imgq_subprocess("enqueue", "--json", "-", cwd=tmp_path, input=scanned.stdout)
    assert queued.returncode == 0, queued.stderr
    jobs = sum(len(json.loads(line).get("jobs") or [None]) for line in queued.stdout.splitlines())
    return ids, jobs


def processed_ids(tmp_path) -> set[str]:
    import sqlite3

    with sqlite3.connect(tmp_path / "imgq.db") as con:
        return {r[0] for r in con.execute("SELECT id FROM files WHERE state = 'processed'")}


def progress_counts(text: str, label: str) -> list[tuple[int, int]]:
    """Every ``M/N`` a progress bar labelled ``label`` drew."""
    return [(int(m), int(n)) for m, n in re.findall(rf"{label}\b[^\n]*?\b(\d+)/(\d+)\b", text)]


# -- 1. stdout is data, whatever stderr is ---------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["ids", "json"])
def test_work_on_a_terminal_writes_ids_to_stdout_and_progress_to_the_terminal(tmp_path, queued, as_json):
    ids, jobs = queued
    r = run_in_tty("work", "--drain", "-j", "2", *(["--json"] if as_json else []), cwd=tmp_path)
    assert r.returncode == 1, r.text  # the truncated photo fails
    processed = processed_ids(tmp_path)
    assert len(processed) >= 6
    lines = r.stdout.splitlines()
    if as_json:
        objects = [json.loads(line) for line in lines]
        assert {o["id"] for o in objects} == processed and len(objects) == len(processed)
        assert all(o["state"] == "processed" for o in objects)
    else:
        assert sorted(lines) == sorted(processed)
    for file_id in processed:
        assert file_id not in r.text  # the ids went to the pipe, not to the screen
    counts = progress_counts(r.text, "work")
    assert counts, r.text  # the bar was drawn on the terminal
    assert all(m <= n <= jobs for m, n in counts), counts  # never "20/19", nor more jobs than there are
    assert counts[-1][0] == counts[-1][1], counts  # finished: every job counted once
    assert re.search(r"work: \d+ done, 1 failed", r.text), r.text  # the summary, on the terminal


def test_work_with_stdout_on_the_same_terminal_shows_every_id(tmp_path, queued):
    r = run_in_tty("work", "--drain", "-j", "2", cwd=tmp_path, stdout_tty=True)
    assert r.returncode == 1, r.text
    # what stays on each line of the screen: the text after its last carriage return
    shown = [line.rstrip("\r").split("\r")[-1] for line in ESCAPE.sub("", r.screen).split("\n")]
    for file_id in processed_ids(tmp_path):
        assert file_id in shown, r.text  # each on a line of its own, above the bar


def test_scan_on_a_terminal_writes_ids_to_stdout_and_its_summary_to_the_terminal(tmp_path, inbox):
    r = run_in_tty("scan", inbox, cwd=tmp_path)
    assert r.returncode == 0, r.text
    ids = r.stdout.splitlines()
    assert len(ids) >= 6 and all(re.fullmatch(r"[\w.-]+", i) for i in ids), r.stdout
    assert not any(i in r.text for i in ids)
    assert re.search(rf"scan: {len(ids)} new, 1 duplicate, 0 failed", r.text), r.text


def test_archive_and_run_on_a_terminal_keep_stdout_for_ids(tmp_path, queued):
    assert imgq_subprocess("work", "--drain", cwd=tmp_path).returncode == 1
    processed = processed_ids(tmp_path)
    dest = tmp_path / "backup"
    dest.mkdir()
    r = run_in_tty("archive", "--to", dest, cwd=tmp_path)
    assert r.returncode == 0, r.text
    assert sorted(r.stdout.splitlines()) == sorted(processed)
    assert re.search(rf"archive: {len(processed)} archived", r.text), r.text

    new = tmp_path / "inbox" / "dave"
    new.mkdir()
    from imgq import samples

    samples.make_photo(new / "IMG_0100.jpg", width=320, height=240, seed=99)
    os.utime(new / "IMG_0100.jpg", (0, 0))
    r = run_in_tty("run", tmp_path / "inbox", "--to", dest, "--settle", "0", cwd=tmp_path)
    assert r.returncode == 0, r.text
    (archived,) = r.stdout.splitlines()
    assert archived.startswith("dave_") and archived not in r.text
    assert "run: " in r.text, r.text
    assert progress_counts(r.text, "scan")[-1] == (1, 1), r.text  # run's steps show their progress too
    assert progress_counts(r.text, "archive")[-1] == (1, 1), r.text


# -- 2. progress on the terminal for every long step, and nowhere else ----------------------

COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def assert_progress(r: TtyRun, label: str, total: int) -> None:
    counts = progress_counts(r.text, label)
    assert counts, r.text  # a bar with counts was drawn on the terminal
    assert all(m <= n == total for m, n in counts), counts
    assert counts[-1] == (total, total), counts  # and it finished


def test_scan_archive_publish_show_progress_on_a_terminal_and_ids_on_stdout(tmp_path, inbox):
    files = sum(len(names) for _, _, names in os.walk(inbox))
    r = run_in_tty("scan", inbox, cwd=tmp_path)
    assert r.returncode == 0, r.text
    ids = r.stdout.splitlines()
    assert len(ids) >= 6 and not any(i in r.text for i in ids)
    assert_progress(r, "scan", files)  # every file read once

    assert imgq_subprocess("enqueue", cwd=tmp_path).returncode == 0
    assert imgq_subprocess("work", "--drain", cwd=tmp_path).returncode == 1
    processed = processed_ids(tmp_path)
    dest = tmp_path / "backup"
    dest.mkdir()
    r = run_in_tty("archive", "--to", dest, cwd=tmp_path)
    assert r.returncode == 0, r.text
    assert sorted(r.stdout.splitlines()) == sorted(processed)
    assert not any(i in r.text for i in processed)
    assert_progress(r, "archive", len(processed))

    r = run_in_tty("publish", tmp_path / "site", cwd=tmp_path)
    assert r.returncode == 0, r.text
    assert sorted(r.stdout.splitlines()) == sorted(processed)  # the ids, and nothing else
    written = sum(1 for p in (tmp_path / "site").rglob("*") if p.is_file()) - 1  # not the manifest
    assert_progress(r, "publish", written)


def test_progress_keeps_to_the_terminal_and_no_color_takes_only_the_colour(tmp_path, inbox):
    r = run_in_tty("scan", "--dry-run", inbox, cwd=tmp_path)
    assert r.returncode == 0 and COLOUR.search(r.screen), r.text  # coloured on a terminal (the check can fail)
    r = run_in_tty("scan", "--dry-run", inbox, cwd=tmp_path, env={"NO_COLOR": "1"})
    assert r.returncode == 0, r.text
    assert progress_counts(r.text, "scan"), r.text  # progress stays
    assert not COLOUR.search(r.screen), repr(r.screen)  # colour goes
    # stderr a pipe (cron, a log): not a trace of the bar, and the same ids
    piped = imgq_subprocess("scan", inbox, cwd=tmp_path, env={"TERM": "xterm-256color"})
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == r.stdout
    assert not progress_counts(piped.stderr, "scan") and "\x1b" not in piped.stderr and "━" not in piped.stderr, piped.stderr
    dest = tmp_path / "backup"
    dest.mkdir()
    assert imgq_subprocess("enqueue", cwd=tmp_path).returncode == 0
    assert imgq_subprocess("work", "--drain", cwd=tmp_path).returncode == 1
    for args in (["archive", "--to", dest], ["publish", tmp_path / "site"]):
        piped = imgq_subprocess(*args, cwd=tmp_path, env={"TERM": "xterm-256color"})
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout.strip() and "\x1b" not in piped.stderr and "━" not in piped.stderr and not re.search(r"\d+/\d+", piped.stderr), piped.stderr


def test_run_dry_run_on_a_terminal_sums_up_what_it_would_do(tmp_path, inbox):
    dest = tmp_path / "backup"
    dest.mkdir()
    r = run_in_tty("run", "--dry-run", inbox, "--to", dest, cwd=tmp_path)
    assert r.returncode == 0, r.text
    ids = r.stdout.split()
    assert len(ids) >= 6 and not (tmp_path / "imgq.db").exists()
    summary = " ".join(r.text[r.text.index("run: scan"):].split())
    assert f"work {len(ids)} files would be processed" in summary, summary
    assert "dry run: nothing changed" in r.text, r.text


# -- 3. summaries people read ----------------------------------------------------------------


def test_not_an_image_reason_reads_as_text(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "alice").mkdir(parents=True)
    (inbox / "alice" / "notes.jpg").write_bytes(b"hello\n")
    (inbox / "alice" / "blob.jpg").write_bytes(b"\x7fELF\x02\x01\x01\x00rest")
    for f in (inbox / "alice").iterdir():
        os.utime(f, (0, 0))
    r = imgq_subprocess("scan", "--json", inbox, cwd=tmp_path)
    reasons = {os.path.basename(o["path"]): o["reason"] for o in map(json.loads, r.stdout.splitlines())}
    assert "b'" not in reasons["notes.jpg"] and "b'" not in reasons["blob.jpg"], reasons
    assert 'starts with the text "hello\\n"' in reasons["notes.jpg"], reasons
    assert "starts with the bytes 7f 45 4c 46 02 01 01 00" in reasons["blob.jpg"], reasons


def test_a_control_character_in_a_name_is_escaped_on_the_terminal(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "alice").mkdir(parents=True)
    bad = inbox / "alice" / "evil\x1b[31mred.jpg"
    bad.write_bytes(b"hello\n")
    os.utime(bad, (0, 0))
    r = run_in_tty("scan", inbox, cwd=tmp_path)
    assert "\x1b[31m" not in r.screen
    assert "evil\\x1b[31mred.jpg" in r.text, r.text


def test_run_summary_is_formatted_for_people(tmp_path, inbox):
    dest = tmp_path / "backup"
    dest.mkdir()
    r = run_in_tty("run", inbox, "--to", dest, cwd=tmp_path)
    assert r.returncode == 1, r.text
    summary = " ".join(r.text[r.text.index("run: "):].split())  # as read, however the terminal wrapped it
    assert "=" not in summary and "{" not in summary and "_" not in summary, summary
    assert re.search(r"archive \d+ archived, \d+ copies \([\d.]+ [kM]B\)", summary), summary
    assert re.search(r"in \d+(\.\d+)?s", summary), summary


def test_collect_reasons_in_status_are_formatted_for_people(tmp_path, inbox):
    dest = tmp_path / "backup"
    dest.mkdir()
    assert imgq_subprocess("run", inbox, "--to", dest, "--no-collect", cwd=tmp_path).returncode == 1
    victim = next(dest.rglob("IMG_0002.jpg"))
    victim.write_bytes(b"not the photo")  # a bad copy: collect keeps the original
    r = imgq_subprocess("collect", "--to", dest, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    status = imgq_subprocess("status", cwd=tmp_path, env={"COLUMNS": "200"})
    block = status.stdout[status.stdout.index("collect:"):]
    assert "checked_at=" not in block and "file_id=" not in block, block
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", block), block  # the check's time, ISO-8601
    assert "IMG_0002.jpg" in block and "keep" in block, block


# -- 4. help reads like a manual -------------------------------------------------------------

INTERNAL = ("<int", "<float", "<list", "[Path]", "...}", "<path", "<text")


def _commands() -> list[list[str]]:
    from imgq.cli import COMMANDS, GROUPS

    out = [[name] for name, (_, hidden) in COMMANDS.items() if not hidden]
    out += [["hosts"], ["hosts", "check"]] if "hosts" in GROUPS else []
    return out


def test_root_help_has_whole_summaries(tmp_path):
    r = imgq_subprocess("--help", cwd=tmp_path, env={"COLUMNS": "100"})
    assert r.returncode == 0
    for word in INTERNAL:
        assert word not in r.stdout
    listed = re.findall(r"^\s{2}(\w+)\s{2,}(.+)$", r.stdout.split("Commands:")[1], re.M)
    assert len(listed) >= 12, r.stdout
    for name, summary in listed:
        assert not summary.rstrip().endswith("..."), (name, summary)


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_command_help_names_no_internal_types(tmp_path, command):
    r = imgq_subprocess(*command, "--help", cwd=tmp_path, env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    for word in INTERNAL:
        assert word not in r.stdout, (word, r.stdout)
    assert "\x1b" not in r.stdout and "\x08" not in r.stdout  # not a terminal: plain text


def test_help_on_a_terminal_with_no_color_has_no_escape_codes(tmp_path):
    r = run_in_tty("scan", "--help", cwd=tmp_path, env={"NO_COLOR": "1"}, stdout_tty=True)
    assert r.returncode == 0
    assert "Usage: imgq scan" in r.screen
    assert "\x1b[" not in r.screen
