"""Chaos: the whole pipeline SIGKILLed at random moments, and inbox files swapped under
it, with real processes and real files. What must hold whatever happens:

- every photo put in the inbox is still there, byte for byte, or byte-identical at
  every destination (a sha256 manifest is kept of what was generated);
- nothing outside the inbox is ever read into the store, the archive or the gallery;
- no job completes twice, none is stuck, no temporary file is left behind;
- nothing hangs (every process has a deadline).

Each test draws its random choices from one seeded generator; the seed is printed (and
shown by pytest when a test fails). ``IMGQ_CHAOS_SEED=N`` replays a run, and
``IMGQ_CHAOS_ROUNDS`` / ``IMGQ_CHAOS_SECONDS`` make a longer soak.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgq import samples

from conftest import imgq_env

pytestmark = pytest.mark.slow

PY = sys.executable
TEMP_MARKS = (".imgq-tmp", ".imgq-collect")  # temporary and quarantine names of imgq's writers


# --------------------------------------------------------------------------- helpers


def seeded(name: str) -> random.Random:
    seed = int(os.environ.get("IMGQ_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"{name}: chaos seed {seed} (replay with IMGQ_CHAOS_SEED={seed})")
    return random.Random(seed)


def q(db_path, sql, *params):
    with sqlite3.connect(db_path, timeout=60) as c:
        return c.execute(sql, params).fetchall()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def regular_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, never through a symlink."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in files:
            p = Path(folder) / name
            if stat.S_ISREG(p.lstat().st_mode):
                found.append(p)
    return found


def hashes(root: Path) -> set[str]:
    return {sha(p) for p in regular_files(root)}


def leftovers(*roots: Path) -> list[str]:
    """Names of imgq's temporary or quarantine files anywhere under ``roots``."""
    return [str(Path(f) / n) for root in roots for f, dirs, files in os.walk(root) for n in dirs + files if any(m in n for m in TEMP_MARKS)]


def write_config(base: Path, dests: list[Path]) -> None:
    # short leases and backoffs so a killed worker's jobs come back within seconds;
    # attempts enough that dozens of kills cannot exhaust a job's tries
    (base / "imgq.toml").write_text(
        "settle = 0\nlease_seconds = 3\nmax_attempts = 1000\nbackoff_seconds = 0.2\nbackoff_max_seconds = 1\n"
        f"destinations = [{', '.join(repr(str(d)) for d in dests)}]\n"
    )


class Step:
    """A command line started as a real process group (``sh -c``), so a pipeline and
    every process a step forks (the worker pool) are killed together."""

    def __init__(self, name: str, command: str, cwd: Path, log: Path):
        self.name, self.command = name, command
        self.log = open(log, "ab")  # what people would read (stderr); ids on stdout are not kept
        self.log.write(f"--- {name}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            ["sh", "-c", command], cwd=cwd, env=imgq_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
        )
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        wait_group_gone(self.proc.pid)
        self.log.close()

    def finish(self, timeout: float) -> bool:
        """Wait for the step to end by itself; False (and the group killed) if it had to
        be killed after ``timeout`` seconds: it hung."""
        try:
            self.proc.wait(timeout=max(0.0, timeout - (time.monotonic() - self.started)))
            self.kill()  # its children too, if any outlived it
            return True
        except subprocess.TimeoutExpired:
            self.log.write(self.where_it_waits().encode())  # for the failure message
            self.log.flush()
            self.kill()
            return False

    def where_it_waits(self) -> str:
        """Each live process of the hung step: its command, state and kernel wait channel."""
        lines = [f"{self.name} hung after {time.monotonic() - self.started:.1f} s:"]
        for pid in group_members(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                continue
            lines.append(f"  pid {pid} state {state} waiting in {wchan or '-'}: {cmd}")
        return "\n".join(lines) + "\n"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still alive after SIGKILL"
        time.sleep(0.02)


def imgq(*args: str) -> str:
    return " ".join([PY, "-m", "imgq", *args])


# --------------------------------------------------------------------------- SIGKILL soak

COMMANDS = {
    "run": f"exec {imgq('run', 'inbox', '-j2')}",
    "work": f"exec {imgq('work', '-j2')}",
    "archive": f"exec {imgq('archive')}",
    "collect": f"exec {imgq('collect')}",
    "scan|enqueue": f"{imgq('scan', 'inbox')} | {imgq('enqueue', '-')}",
}


def clean_runs(base: Path, db: Path, log: Path, *, most: int = 12) -> list[str]:
    """``imgq run`` again and again, as cron would, until a run finds nothing to do and
    no job is left waiting (leases of killed workers expire in 3 s). Returns their exit
    codes and outputs, for the failure message."""
    outcomes = []
    for _ in range(most):
        before = q(db, "SELECT count(*) FROM events")[0][0]
        step = Step("run", COMMANDS["run"], base, log)
        assert step.finish(120), "a clean `imgq run` hung"
        after = q(db, "SELECT count(*) FROM events")[0][0]
        pending = q(db, "SELECT count(*) FROM jobs WHERE state IN ('ready', 'leased')")[0][0]
        outcomes.append(f"exit {step.proc.returncode}, {after - before} events, {pending} jobs pending")
        if after == before and pending == 0 and step.proc.returncode == 0:
            return outcomes
        if pending:
            time.sleep(3.2)  # a killed worker's lease runs out
    raise AssertionError(f"the pipeline never became quiet: {outcomes}; log {log.read_text()[-3000:]}")


@pytest.mark.timeout(170)
def test_whole_pipeline_sigkill_soak(tmp_path):
    rng = seeded("soak")
    rounds = int(os.environ.get("IMGQ_CHAOS_ROUNDS", "30"))
    inbox, a, b = tmp_path / "inbox", tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    write_config(tmp_path, [a, b])
    log = tmp_path / "steps.log"
    samples.make_inbox(inbox, photographers=("alice", "bob", "carol"), per_owner=20, size=(160, 120), with_broken=False, with_rotated=False, with_duplicate=False, with_loose=False, seed=rng.randrange(1000), jobs=2)
    manifest = {str(p.relative_to(inbox)): sha(p) for p in regular_files(inbox)}

    for n in range(rounds):
        names = rng.sample(sorted(COMMANDS), 2 if rng.random() < 0.5 else 1)
        t0 = time.monotonic()
        steps = [Step(name, COMMANDS[name], tmp_path, log) for name in names]
        kills = sorted(((rng.uniform(0.3, 2.0), s) for s in steps), key=lambda k: k[0])
        # photos keep arriving while the steps run (each written to a hidden name and
        # renamed, as sync clients do), so every round has work to cut short
        owner = rng.choice(["alice", "bob", "carol", "dora"])
        for i in range(rng.randint(4, 12)):
            w, h = rng.choice([(160, 120), (640, 480), (1600, 1200)])  # bigger ones take long enough to copy to be cut
            p = samples.make_photo(inbox / owner / f"R{n:02d}_{i:02d}.jpg", width=w, height=h, seed=10_000 + 100 * n + i)
            manifest[str(p.relative_to(inbox))] = sha(p)
        for at, step in kills:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            step.kill()
        print(f"round {n}: {', '.join(f'{s.name} killed at {at:.2f}s' for at, s in kills)}")
    db = tmp_path / "imgq.db"
    # what the kills left (shown, to see that they bite): leases, half copies, states
    print(
        "after the rounds:", q(db, "SELECT state, count(*) FROM jobs GROUP BY state"), q(db, "SELECT state, count(*) FROM files GROUP BY state"),
        f"{len(leftovers(inbox, tmp_path / 'imgq-store', a, b))} temporary files,",
        f"{q(db, 'SELECT count(*) FROM runs WHERE ended_at IS NULL')[0][0]} steps killed after they started,",
        f"{q(db, 'SELECT count(*) FROM events WHERE detail LIKE ?', '%expired%')[0][0]} leases of killed workers taken over",
    )

    outcomes = clean_runs(tmp_path, tmp_path / "imgq.db", log)
    print("clean runs:", outcomes)
    assert q(db, "PRAGMA integrity_check") == [("ok",)]

    # every original: byte-identical at every destination, or still in the inbox
    at_a, at_b = hashes(a), hashes(b)
    in_inbox = {str(p.relative_to(inbox)): sha(p) for p in regular_files(inbox)}
    lost = [rel for rel, digest in manifest.items() if in_inbox.get(rel) != digest and not (digest in at_a and digest in at_b)]
    assert lost == [], f"originals lost: {lost}"
    # after the clean runs: everything archived and collected, nothing left behind
    assert in_inbox == {}, f"left in the inbox: {sorted(in_inbox)}"
    assert set(manifest.values()) <= at_a and set(manifest.values()) <= at_b
    states = dict(q(db, "SELECT state, count(*) FROM files GROUP BY state"))
    assert states == {"collected": len(manifest)}, states
    assert q(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", len(manifest))]
    # the journal: no job completed twice, no file collected twice
    twice = q(db, "SELECT job_id, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY job_id HAVING count(*) > 1")
    assert twice == [], f"jobs completed more than once: {twice}"
    twice = q(db, "SELECT file_id, count(*) FROM events WHERE entity = 'file' AND to_state = 'collected' GROUP BY file_id HAVING count(*) > 1")
    assert twice == [], f"files collected more than once: {twice}"
    # every recorded copy is on its disk with the recorded bytes
    for dest, path, digest in q(db, "SELECT destination, path, sha256 FROM copies"):
        p = Path(path) if os.path.isabs(path) else Path(dest) / path
        assert p.is_file() and sha(p) == digest, (dest, path)
    store = tmp_path / "imgq-store"
    for path, digest in q(db, "SELECT path, sha256 FROM artifacts"):
        assert sha(store / path) == digest, path
    assert leftovers(inbox, store, a, b) == []


# --------------------------------------------------------------------------- swap races


def private_photo(path: Path) -> Path:
    """A photo no inbox holds: magenta with a green grid, easy to recognise at any size."""
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[:, :] = (255, 0, 255)
    pixels[::16, :] = (0, 255, 0)
    pixels[:, ::16] = (0, 255, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def looks_private(path: Path) -> bool:
    """Whether an image shows the private photo (mostly magenta), whatever its size."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
    except Exception:
        return False
    magenta = (rgb[..., 0] > 170) & (rgb[..., 1] < 90) & (rgb[..., 2] > 170)
    return magenta.mean() > 0.4


class Swapper(threading.Thread):
    """Swaps inbox photos for a symlink to the private photo, a FIFO, or a new photo,
    for a moment, then puts them back; keeps what it takes outside the inbox meanwhile
    and records every new photo it puts in the inbox."""

    def __init__(self, rng: random.Random, inbox: Path, names: list[str], private: Path, fresh: list[Path], held: Path):
        super().__init__(daemon=True)
        self.rng, self.inbox, self.names, self.private, self.fresh, self.held = rng, inbox, names, private, fresh, held
        self.put: dict[str, str] = {}  # sha256 -> what: every new photo placed in the inbox
        self.stop = threading.Event()
        self.swaps: dict[str, int] = {"symlink": 0, "fifo": 0, "photo": 0}
        self.error: BaseException | None = None

    def run(self):
        try:
            n = 0
            while not self.stop.is_set():
                self.swap_one(n)
                n += 1
        except BaseException as e:  # shown by the test
            self.error = e

    def swap_one(self, n: int) -> None:
        rel = self.rng.choice(self.names)
        name = self.inbox / rel
        kept = self.held / f"{n}"
        try:
            os.rename(name, kept)  # the photo is in the test's hands now
        except FileNotFoundError:
            time.sleep(0.01)  # collected, or swapped away: another one
            return
        kind = self.rng.choice(["symlink", "fifo", "photo"] if self.fresh else ["symlink", "fifo"])
        tmp = name.with_name(f".swap-{n}")  # hidden: scan skips it
        if kind == "symlink":
            os.symlink(self.private, tmp)
        elif kind == "fifo":
            os.mkfifo(tmp)
        else:
            new = self.fresh.pop()
            self.put[sha(new)] = str(new)
            os.rename(new, tmp)
        os.rename(tmp, name)  # atomically in place of the photo
        self.swaps[kind] += 1
        time.sleep(self.rng.uniform(0.02, 0.4))
        self.put_back(name, kept, n)

    def put_back(self, name: Path, kept: Path, n: int) -> None:
        try:
            mode = name.lstat().st_mode
        except FileNotFoundError:
            mode = None  # the new photo was collected: it must be at every destination
        if mode is not None and (stat.S_ISLNK(mode) or stat.S_ISFIFO(mode)):
            os.unlink(name)
        elif mode is not None:
            os.link(name, name.with_name(f"NEW_{n}_{name.name}"))  # keep the new photo, under a new name
            os.unlink(name)
        try:
            os.link(kept, name)  # never over anything
        except FileExistsError:
            os.link(kept, name.with_name(f"BACK_{n}_{name.name}"))
        os.unlink(kept)


@pytest.mark.timeout(170)
def test_swap_races_read_nothing_outside_delete_nothing_unverified_hang_nowhere(tmp_path):
    rng = seeded("swap")
    seconds = float(os.environ.get("IMGQ_CHAOS_SECONDS", "25"))
    inbox, a, b, site = tmp_path / "inbox", tmp_path / "A", tmp_path / "B", tmp_path / "site"
    a.mkdir(), b.mkdir()
    write_config(tmp_path, [a, b])
    log = tmp_path / "steps.log"
    outside = tmp_path / "outside"
    private = private_photo(outside / "private.jpg")
    secret = sha(private)
    samples.make_inbox(inbox, photographers=("alice", "bob"), per_owner=20, size=(160, 120), with_broken=False, with_rotated=False, with_duplicate=False, with_loose=False, seed=rng.randrange(1000), jobs=2)
    fresh = [samples.make_photo(outside / "new" / f"N{i:02d}.jpg", width=160, height=120, seed=20_000 + i) for i in range(30)]
    names = sorted(str(p.relative_to(inbox)) for p in regular_files(inbox))
    put = {sha(inbox / rel): rel for rel in names}
    (outside / "held").mkdir()
    # recorded as regular files first: the swaps happen after the scan, as in the attacks
    assert Step("scan|enqueue", f"{imgq('scan', 'inbox')} | {imgq('enqueue', '-')}", tmp_path, log).finish(60)

    swapper = Swapper(rng, inbox, names, private, fresh, outside / "held")
    swapper.start()
    hung: list[str] = []
    cycles = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            steps = [
                # --once, not --drain: a photo the swaps moved away for good (kept as
                # NEW_..., its name collected) fails "No such file" as a transient error,
                # retried with backoff up to this config's 1000 attempts; a drain waits
                # out those retries by design (seen: 62 attempts), which is not a hang
                Step("work", f"exec {imgq('work', '-j2', '--once')}", tmp_path, log),
                Step("archive", f"exec {imgq('archive')}", tmp_path, log),
                Step("collect", f"exec {imgq('collect')}", tmp_path, log),
                Step("scan|enqueue", f"{imgq('scan', 'inbox')} | {imgq('enqueue', '-')}", tmp_path, log),
                Step("publish", f"exec {imgq('publish', 'site')}", tmp_path, log),
            ]
            # a hang is a step that never ends (a FIFO opened for reading blocks for
            # ever); each normally takes well under a second, and one that passes the
            # deadline leaves where it waited in the log
            hung += [s.name for s in steps if not s.finish(60)]
            cycles += 1
    finally:
        swapper.stop.set()
        swapper.join(timeout=30)
    print(f"{cycles} cycles, swaps: {swapper.swaps}")
    assert swapper.error is None, swapper.error
    assert not list((outside / "held").iterdir()), "every photo taken out was put back"
    put.update(swapper.put)
    # every violation is listed, not only the first: a failure shows the whole picture
    problems = [f"steps that hung (killed after 60 s): {hung}"] if hung else []

    # once the swaps are over, a normal run and a publish, with a deadline too
    if not Step("run", f"exec {imgq('run', 'inbox', '-j2')}", tmp_path, log).finish(90):
        problems.append("a run after the swaps hung")
    if not Step("publish", f"exec {imgq('publish', 'site')}", tmp_path, log).finish(60):
        problems.append("publish after the swaps hung")

    # nothing outside the inbox was read into the journal, the store, the archive or the gallery
    db, store = tmp_path / "imgq.db", tmp_path / "imgq-store"
    recorded = q(db, "SELECT id, path FROM files WHERE sha256 = ?", secret)
    if recorded:
        problems.append(f"the private photo was scanned as {recorded}")
    for root in (store, a, b, site):
        if secret in hashes(root):
            problems.append(f"the private photo's bytes are in {root}")
        shown = [str(p) for p in regular_files(root) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and looks_private(p)]
        if shown:
            problems.append(f"the private photo's pixels are in {root}: {shown}")
    # nothing unverified deleted: every photo put in the inbox is there or at both destinations
    in_inbox, at_a, at_b = hashes(inbox), hashes(a), hashes(b)
    lost = [what for digest, what in put.items() if digest not in in_inbox and not (digest in at_a and digest in at_b)]
    if lost:
        problems.append(f"photos deleted without a verified copy at every destination: {lost}")
    left = leftovers(inbox, store, a, b, site)
    if left:
        problems.append(f"temporary or quarantine files left: {left}")
    assert private.is_file() and sha(private) == secret
    assert problems == [], "\n".join(problems) + f"\nlog: {log.read_text()[-3000:]}"
