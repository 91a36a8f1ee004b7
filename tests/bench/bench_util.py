"""What every part of bin/bench shares: the machine's description, tool versions, the
environment imgq subprocesses run with, medians, and a plain text table.

The bench is a report, not a test: nothing here asserts a time. Progress goes to stderr,
the tables to stdout, every figure to the JSON file.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
IMGQ = str(Path(sys.executable).parent / "imgq")  # the console script installed in the venv


def say(message: str) -> None:
    """One progress line for the person running the bench (stderr, flushed)."""
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def median(values):
    return statistics.median(values) if values else None


def imgq_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment minus IMGQ_* (a developer's IMGQ_DB must not leak in) and NO_COLOR set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def timed_run(argv, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``argv`` to completion; (wall seconds, the CompletedProcess). Raises on a non-zero exit."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, **kwargs)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv[:4]))}... exited {proc.returncode}: {_tail(proc.stderr)}"
        )
    return wall, proc


def _tail(data, n: int = 800) -> str:
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return (data or "")[-n:].strip()


def pin_to_one_core(cpu: int | None = None) -> int | None:
    """Restrict this process to one CPU (the last allowed one unless told); returns it."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    return cpu


def proc_status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM, VmRSS...), or None when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), empty when unknown."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


# --------------------------------------------------------------------------- CPU accounting


def _cpu_stat() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


class CpuMeter:
    """CPU used while measuring: by us (this process and every child we waited for) and by
    everything else on the machine. A shared machine makes wall times slower; CPU seconds
    per photo stay comparable, and the share taken by others says how far to trust walls.
    """

    def __init__(self):
        self.t0 = time.perf_counter()
        self.os0 = os.times()
        self.stat0 = _cpu_stat()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        t = os.times()
        ours_children = (t.children_user - self.os0.children_user) + (t.children_system - self.os0.children_system)
        ours_self = (t.user - self.os0.user) + (t.system - self.os0.system)
        out = {"wall": wall, "cpu_children": ours_children, "cpu_self": ours_self}
        stat = _cpu_stat()
        if stat and self.stat0:
            busy = stat[0] - self.stat0[0]
            capacity = wall * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
            others = max(0.0, busy - ours_children - ours_self)
            out["others_share"] = others / capacity if capacity else None
            out["steal_share"] = (stat[1] - self.stat0[1]) / capacity if capacity else None
        return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_mb() -> int | None:
    kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = int(line.split()[1])
    except OSError:
        pass
    return kb // 1024 if kb else None


def _first_line(argv) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout or p.stderr or "").strip()
    return text.splitlines()[0].strip() if text else None


def imagemagick() -> tuple[str | None, list[str]]:
    """The ImageMagick command to run: ``magick`` (IM 7) or ``convert`` (IM 6), as argv prefix.

    Only a real executable (ELF) counts: some sandboxes put a script named ``convert`` first
    on PATH that stands in for ImageMagick and forwards to /usr/bin/convert, which would add
    an interpreter start-up to every call and be charged to ImageMagick.
    """
    candidates = []
    for name in ("magick", "convert"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    candidates += ["/usr/bin/magick", "/usr/bin/convert"]
    for c in candidates:
        real = os.path.realpath(c)
        try:
            with open(real, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
        except OSError:
            continue
        return real, [real]
    return None, []


def tool_versions() -> dict[str, str | None]:
    from PIL import Image, features

    im_path, _ = imagemagick()
    parallel = shutil.which("parallel")
    vips = shutil.which("vipsthumbnail")
    return {
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "libjpeg": (features.version("jpg") or "?") + (" (turbo)" if features.check_feature("libjpeg_turbo") else ""),
        "sqlite": sqlite3.sqlite_version,
        "vipsthumbnail": _first_line([vips, "--version"]) if vips else None,
        "imagemagick": (_first_line([im_path, "-version"]) or "").replace("Version: ", "") or None if im_path else None,
        "parallel": _first_line([parallel, "--version"]) if parallel else None,
        "imgq": _git_describe(),
    }


def _git_describe() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "imgq"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not head:
        return None
    return head + (" + uncommitted changes in imgq/" if dirty else "")


def machine_info() -> dict:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": allowed,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_total_mb": mem_total_mb(),
        "kernel": platform.release(),
        "hostname": platform.node(),
    }


# --------------------------------------------------------------------------- output


def table(headers: list[str], rows: list[list], *, right: set[int] | None = None) -> str:
    """A plain text table; columns in ``right`` (default: all but the first) align right."""
    right = set(range(1, len(headers))) if right is None else right
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
