"""What a command imports before it works: cron runs small batches, and a start that
imports pydantic (through Typer's coercion), Pillow or rich for nothing costs more than
the work. Checked by the modules imported (``python -X importtime``), not by a clock;
bin/bench and docs/bench.md hold the times."""

from __future__ import annotations

import subprocess
import sys

from conftest import imgq_env, imgq_subprocess

# Not needed to start any command: Typer's pydantic path, the migrations' library, arrays
NEVER = {"pydantic", "pydantic_core", "sqlite_utils", "numpy", "cv2"}


def _imported(*args, cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "imgq", *args],
                         cwd=cwd, env=imgq_env({"NO_COLOR": None}), capture_output=True, text=True, timeout=120)
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return out, {m.split(".")[0] for m in modules} | modules


def test_read_commands_and_noop_steps_start_lean(tmp_path):
    (tmp_path / "inbox").mkdir()
    assert imgq_subprocess("scan", "inbox", cwd=tmp_path).returncode == 0  # the database, empty
    lean = {
        # args: what else it must not import (stdout is a pipe here: no rich for ids)
        ("status",): {"PIL"},
        ("status", "--json"): {"PIL", "rich"},
        ("status", "--json", "--failures", "3"): {"PIL", "rich"},  # a value given, not only defaults
        ("scan", "inbox"): {"rich"},
        ("enqueue",): {"rich"},
        ("report", "--json", "--since", "1h"): {"PIL", "rich"},
        ("work", "-j2", "--drain"): set(),  # cron's "anything to do?": its workers load no OpenCV, no numpy (0.1 s each)
    }
    for args, also in lean.items():
        out, imported = _imported(*args, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        assert "imgq.cli" in imported, args  # the command line did run
        assert not imported & (NEVER | also), (args, sorted(imported & (NEVER | also)))


def test_values_typer_would_refuse_are_refused_in_typers_words(tmp_path):
    # the plain coercion answers only what it can answer as Typer does; the rest is Typer's
    (tmp_path / "inbox").mkdir()
    for args, option in ((("status", "--failures", "x"), "--failures"), (("status", "--failures", "-1"), "--failures"),
                         (("status", "--watch", "0.1"), "--watch"), (("scan", "--settle", "1e", "inbox"), "--settle")):
        r = imgq_subprocess(*args, cwd=tmp_path)
        assert r.returncode == 2, args
        assert r.stderr.startswith(f"imgq: error: Invalid value for '{option}': "), (args, r.stderr)


def test_version_builds_no_command_line(tmp_path):
    out, imported = _imported("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("imgq ")
    assert not {m for m in imported if m in ("typer", "click", "rich") or m.startswith("imgq.cli")}, imported
