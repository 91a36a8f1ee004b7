"""bin/bench runs from a clean clone: it installs what every part needs and each part can
start. Measuring takes minutes, so the parts are not run here: ``bin/bench --check``
imports every module each part imports when it runs, finds its programs and checks for
root, measuring nothing (a newcomer's `bin/bench ops fleet` stopped on a missing pytest
and skipped the faces for want of scikit-image)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "bench"))
from driver import PARTS  # noqa: E402

pytestmark = pytest.mark.slow  # bin/bench in a subprocess; a venv made for the clean copy

NEEDS_ROOT = {name for name, (module, _) in PARTS.items() if __import__(module).NEEDS["root"]}


def _bench(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGQ_BENCH_NO_APT": "1"}  # bin/test installed the system packages
    return subprocess.run([str(cwd / "bin" / "bench"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ready(stdout: str) -> dict[str, str]:
    lines = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    assert set(lines) == set(PARTS), stdout
    return {part: verdict for part, verdict in lines.items()
            if not (verdict.startswith("ready") or (verdict == "cannot run: missing root" and part in NEEDS_ROOT and os.geteuid() != 0))}


def test_help_names_every_part_and_check():
    r = _bench("--help", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert all(part in r.stdout for part in PARTS) and "--check" in r.stdout


def test_every_part_can_start_here():
    r = _bench("--check", cwd=REPO)
    assert _ready(r.stdout) == {}, r.stdout + r.stderr
    assert r.returncode == (0 if os.geteuid() == 0 else 1)


def test_a_clean_clone_installs_what_every_part_needs(tmp_path):
    # the tracked files as they are in this checkout, without .venv or bench-work/
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    clone = tmp_path / "imgq"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    r = _bench("--check", cwd=clone, timeout=900)
    assert (clone / ".venv" / "bin" / "imgq").exists(), r.stderr
    assert _ready(r.stdout) == {}, r.stdout + r.stderr
