"""A wheel built from this tree and installed in a fresh virtual environment puts the man
pages and the completions where man and the shells find them (README: "Install")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a wheel built, a venv made, shells started: seconds

REPO = Path(__file__).resolve().parent.parent
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def _run(*args, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The prefix of a fresh venv holding imgq installed from a wheel of this tree."""
    work = tmp_path_factory.mktemp("install")
    # build from a copy of what the tree holds now, so the build leaves nothing in it
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "imgq", "man", "completions"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    # --no-build-isolation: the setuptools of .venv (>= 70.1, the test extra) builds
    # offline; with isolation pip would fetch setuptools from the index
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", work / "dist", source)
    wheel = next((work / "dist").glob("imgq-*.whl"))
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    # a fresh venv's own pip would be as good; .venv's, aimed at it, spares installing one
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps", wheel)
    return venv


def _env(venv: Path, **extra) -> dict[str, str]:
    """A login-like environment: the venv's bin first on PATH (as `activate` or pipx's
    ~/.local/bin does), a HOME of its own, no MANPATH (man-db then derives it from PATH)."""
    env = {"PATH": f"{venv / 'bin'}:{SYSTEM_PATH}", "HOME": str(venv.parent / "home"), "LANG": "C.UTF-8"}
    Path(env["HOME"]).mkdir(exist_ok=True)
    env.update(extra)
    return env


def test_the_wheel_installs_pages_and_completions_under_share(installed):
    share = installed / "share"
    pages = sorted(p.name for p in (share / "man" / "man1").iterdir())
    assert pages == sorted(p.name for p in (REPO / "man").glob("*.1"))
    assert (share / "bash-completion" / "completions" / "imgq").read_text() == (REPO / "completions" / "bash" / "imgq").read_text()
    assert (share / "zsh" / "site-functions" / "_imgq").read_text() == (REPO / "completions" / "zsh" / "_imgq").read_text()
    assert (share / "fish" / "vendor_completions.d" / "imgq.fish").read_text() == (REPO / "completions" / "fish" / "imgq.fish").read_text()


@pytest.mark.skipif(not shutil.which("man"), reason="man-db not installed (bin/test installs it)")
def test_man_finds_the_installed_pages(installed):
    for page in ("imgq", "imgq-scan", "imgq-hosts-check"):
        out = _run("man", "-w", page, env=_env(installed))
        assert out.stdout.strip() == str(installed / "share" / "man" / "man1" / f"{page}.1")


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="bash-completion not installed (bin/test installs it)")
def test_bash_completion_loads_it_on_demand(installed):
    # What bash-completion does on the first Tab after `imgq`: look the command's name up
    # in its folders and source that file. 2.12 and later also look beside each bin
    # folder on PATH; earlier ones (Debian 12 has 2.11) need the venv's share folder in
    # XDG_DATA_DIRS, as the README says.
    load = f"""
        source {BASH_COMPLETION}
        complete -p imgq 2>/dev/null && exit 3   # nothing loaded yet
        if declare -F _comp_load >/dev/null; then _comp_load imgq; else __load_completion imgq; fi || exit 4
        complete -p imgq
        shopt -s extdebug; declare -F _imgq
    """
    env = _env(installed, XDG_DATA_DIRS=f"{installed / 'share'}:/usr/local/share:/usr/share")
    out = _run("bash", "-c", load, env=env)
    assert out.stdout.splitlines()[0] == "complete -F _imgq imgq"
    assert out.stdout.split()[-1] == str(installed / "share" / "bash-completion" / "completions" / "imgq")
    probe = subprocess.run(["bash", "-c", f"source {BASH_COMPLETION}; declare -F _comp_load"], capture_output=True)
    if probe.returncode == 0:  # bash-completion >= 2.12: PATH alone is enough
        out = _run("bash", "-c", load, env=_env(installed))
        assert out.stdout.splitlines()[0] == "complete -F _imgq imgq"


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh not installed (bin/test installs it)")
def test_zsh_autoloads_it_from_the_site_functions_folder(installed):
    folder = installed / "share" / "zsh" / "site-functions"
    out = _run("zsh", "-f", "-c", f"fpath=({folder} $fpath); autoload -U +X _imgq && whence -v _imgq", env=_env(installed))
    assert out.stdout.strip() == f"_imgq is a shell function from {folder / '_imgq'}"


@pytest.mark.skipif(not shutil.which("fish"), reason="fish not installed (bin/test installs it)")
def test_fish_finds_it_in_its_vendor_folder(installed):
    # fish looks in DIR/fish/vendor_completions.d for each DIR of XDG_DATA_DIRS
    env = _env(installed, XDG_DATA_DIRS=f"{installed / 'share'}:/usr/local/share:/usr/share")
    out = _run("fish", "-c", "complete -C 'imgq '", env=env)  # HOME is new: no user config (--no-config would drop the vendor folders too)
    offered = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert {"scan", "enqueue", "work", "log", "retry"} <= set(offered), offered
