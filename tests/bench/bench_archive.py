"""bin/bench archive: imgq archive against rclone copy and rsync, same files, same
destinations: a local folder and an ssh:// one (a real OpenSSH server on 127.0.0.11,
tests/sshhosts.py, needs root; on this same machine, so encryption both ways shares the
CPUs).

The files are photos whose bytes are mostly incompressible padding after a small real
JPEG (so processing them costs little and what is measured is moving bytes): ``--archive-
files`` of ``--archive-mb`` MB. imgq needs them processed first (scan, enqueue, work; not
timed): each imgq run starts from a copy of that database and store, and moves the
originals plus their two small artifacts. Methods, interleaved in each round, each into
an empty destination:

- imgq archive --transfers N: temporary name, fsync, read back and sha256 compared (on
  the host for ssh://), rename, recorded in the journal
- rclone copy --transfers N (the sftp backend for ssh: Go's SSH; it checks size, and
  the hash where the remote has md5sum/sha1sum)
- rsync -a (over OpenSSH for ssh; no read-back)

MB/s = bytes the method wrote / its wall time (start-up included), median of the rounds.

Before each method, what earlier ones left unwritten in the page cache is written out
(``sync``, not timed): rclone and rsync leave their copies for the kernel to write later,
and that writeback would otherwise run during the next method's time, where a method
that fsyncs (imgq) waits for the disk it keeps busy. Each method starts with nothing
pending; what it leaves pending itself is not counted (imgq leaves nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SET_VERSION = 1


NEEDS = {"modules": ["sshhosts", "PIL", "imgq.samples"], "programs": ["/usr/sbin/sshd", "ssh", "ssh-keygen", "rclone", "rsync"], "optional": [], "root": True}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("archive")
    g.add_argument("--archive-files", type=int, default=32, metavar="N", help="files archived (default 32)")
    g.add_argument("--archive-mb", type=int, default=8, metavar="MB", help="size of each file (default 8)")
    g.add_argument("--archive-transfers", type=int, default=4, metavar="N", help="imgq and rclone --transfers (default 4)")


def _file_set(work: Path, count: int, mb: int) -> Path:
    from imgq import samples

    inbox = work / f"archive-v{SET_VERSION}-n{count}-{mb}mb" / "inbox"
    done = inbox.parent / "done"
    if not done.exists():
        shutil.rmtree(inbox, ignore_errors=True)
        past = time.time() - 3600
        for i in range(count):
            p = samples.make_photo(inbox / f"o{i % 4}" / f"a{i:04d}.jpg", width=320, height=240, seed=70_000 + i)
            with open(p, "ab") as f:
                f.write(os.urandom(mb * 1_000_000 - p.stat().st_size))  # after the JPEG's end: ignored by decoders
            os.utime(p, (past, past))
        done.write_text("ok\n")
    return inbox


def _imgq(argv, cwd: Path) -> None:
    from bench_util import IMGQ, imgq_env

    r = subprocess.run([IMGQ, *map(str, argv)], cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"imgq {' '.join(map(str, argv[:3]))} exited {r.returncode}: {r.stderr[-800:]}")


def _timed(argv, cwd: Path, env=None) -> float:
    from bench_util import imgq_env

    t0 = time.perf_counter()
    r = subprocess.run(list(map(str, argv)), cwd=cwd, env=env or imgq_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{Path(str(argv[0])).name} exited {r.returncode}: {r.stderr[-800:]}")
    return wall


def _tree_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def _same_originals(inbox: Path, dest: Path) -> int:
    """Originals whose copy somewhere under dest differs or is missing (by name and bytes)."""
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    have = {}
    for p in dest.rglob("*.jpg"):
        if p.is_file() and not p.name.startswith(".") and ".thumb." not in p.name and ".web." not in p.name:
            have[p.name] = p
    return sum(1 for p in inbox.rglob("*.jpg") if p.name not in have or digest(have[p.name]) != digest(p))


def run(args, ctx) -> dict:
    from bench_util import IMGQ, median, ratio, say

    if os.geteuid() != 0:
        raise RuntimeError("needs root: the ssh destination is a real sshd started by tests/sshhosts.py")
    for tool in ("rclone", "rsync"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed (apt-get install -y {tool})")
    sys.path.insert(0, str(REPO / "tests"))
    from sshhosts import SshFleet

    work = Path(ctx["work"])
    n_files, mb, transfers = args.archive_files, args.archive_mb, args.archive_transfers
    inbox = _file_set(work, n_files, mb)
    for p in inbox.rglob("*.jpg"):  # every method reads from the page cache
        p.read_bytes()
    runs = work / "runs" / "archive"
    shutil.rmtree(runs, ignore_errors=True)
    template = runs / "template"
    template.mkdir(parents=True)
    say("archive: processing the files once (not timed)...")
    _imgq(["scan", inbox], template)
    _imgq(["enqueue"], template)
    _imgq(["work", "-j2"], template)
    ssh_dir = work / "archive-ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    methods = [f"{tool} {where}" for where in ("local", "ssh") for tool in ("imgq", "rclone", "rsync")]
    results = {m: {"walls": [], "bytes": None, "files": None, "problems": []} for m in methods}
    with SshFleet(ssh_dir) as fleet:
        host = fleet.add_host()
        rclone_remote = (
            f":sftp,host={host.address},port={host.port},user=root,key_file={fleet.client_key},"
            f"known_hosts_file={fleet.known_hosts},shell_type=unix"
        )
        rsync_ssh = f"ssh -F {fleet.ssh_config}"
        for r in range(args.repeat):
            say(f"archive: round {r + 1}/{args.repeat}")
            for m in methods:
                tool, where = m.split()
                out = runs / m.replace(" ", "-")
                shutil.rmtree(out, ignore_errors=True)
                dest = out / "dest"
                dest.mkdir(parents=True)
                try:
                    if tool == "imgq":
                        shutil.copy2(template / "imgq.db", out / "imgq.db")
                        shutil.copytree(template / "imgq-store", out / "imgq-store")
                        url = str(dest) if where == "local" else f"ssh://{host.alias}{dest}"
                        argv = [IMGQ, "archive", "--to", url, "--transfers", transfers, "--ssh-config", fleet.ssh_config]
                    elif tool == "rclone":
                        target = str(dest) if where == "local" else f"{rclone_remote}:{dest}"
                        argv = ["rclone", "copy", "--transfers", transfers, "--config", "/dev/null", f"{inbox}/", target]
                    else:
                        target = f"{dest}/" if where == "local" else f"{host.alias}:{dest}/"
                        argv = ["rsync", "-a", *(["-e", rsync_ssh] if where == "ssh" else []), f"{inbox}/", target]
                    say(f"archive: {m}...")
                    os.sync()  # the earlier methods' unwritten copies are not this one's to wait for
                    wall = _timed(argv, out)
                except Exception as e:
                    results[m]["problems"].append(str(e))
                    say(f"archive: {m} FAILED: {e}")
                    continue
                bad = _same_originals(inbox, dest)
                if bad:
                    results[m]["problems"].append(f"{bad} originals missing or different at the destination")
                results[m]["walls"].append(wall)
                results[m]["files"], results[m]["bytes"] = _tree_bytes(dest)
                shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(ssh_dir, ignore_errors=True)
    for m, res in results.items():
        walls = res.pop("walls")
        res["walls"] = [round(w, 3) for w in walls]
        res["wall"] = median(walls) if walls else None
        res["mb_per_s"] = res["bytes"] / 1e6 / res["wall"] if res["wall"] and res["bytes"] else None
    rate = lambda m: results[m]["mb_per_s"]  # noqa: E731
    ratios = {f"imgq / {tool} ({where})": ratio(rate(f"imgq {where}"), rate(f"{tool} {where}")) for where in ("local", "ssh") for tool in ("rclone", "rsync")}
    return {
        "files": n_files,
        "mb_each": mb,
        "transfers": transfers,
        "repeat": args.repeat,
        "methods": results,
        "ratios": ratios,
        "targets": [
            {"part": "archive", "name": f"imgq archive / rclone copy --transfers {transfers} (local, MB/s)", "value": ratios["imgq / rclone (local)"], "target": 1.0, "unit": "x"},
            {"part": "archive", "name": f"imgq archive / rclone copy --transfers {transfers} (ssh, MB/s)", "value": ratios["imgq / rclone (ssh)"], "target": 1.0, "unit": "x"},
        ],
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    out = [f"archive: {res['files']} files of {res['mb_each']} MB (incompressible) to an empty local folder and to ssh:// on an sshd "
           f"on this machine; --transfers {res['transfers']} for imgq and rclone; median of {res['repeat']} rounds, methods interleaved", ""]
    rows = []
    for name, m in res["methods"].items():
        note = "ok" if not m["problems"] else f"PROBLEMS: {m['problems'][0]}"
        rows.append([name, m["files"] if m["files"] is not None else "-", fmt((m["bytes"] or 0) / 1e6, 1), fmt(m.get("wall"), 2), fmt(m.get("mb_per_s"), 1), note])
    out.append(table(["method", "files written", "MB written", "wall s", "MB/s", "outputs"], rows, right={1, 2, 3, 4}))
    out.append("  imgq: the originals and their thumb and web artifacts, each fsynced, read back and sha256-compared before its rename, "
               "and recorded; rclone: size and hash checked where the remote offers one; rsync: no read-back")
    out.append("")
    out.append(table(["ratio (MB/s)", "value"], [[k, "-" if v is None else f"{v:.2f}x"] for k, v in res["ratios"].items()]))
    return "\n".join(out)
