"""A worker reuses the memory of one job for the next instead of asking the kernel again.

Every job allocates image-sized arrays (decode, each operation's result, the encoder's
input). glibc hands blocks above its mmap threshold (128 KiB at first) to the kernel on
free, so the next job's arrays were fresh pages again: about 800 page faults a job on the
bulk enhancer's small photos, 2.6 s of the Crops set's 5.8 CPU seconds in the kernel. A
worker now keeps freed blocks below 32 MiB for reuse (imgq.work.tune_worker_process).

Counted in page faults of the worker processes (from the kernel's accounting, not a time),
per job, as the difference between a long and a short run so that start-up cancels out.
"""

from __future__ import annotations

import os
import resource
import time

from conftest import imgq_subprocess
from imgq import samples

CHAIN = "brightness=1.2|contrast=1.2|sharpness=1.5"


def faults_of_a_run(tmp_path, name: str, jobs: int) -> int:
    inbox = tmp_path / name / "inbox"
    for k in range(jobs):
        p = samples.make_photo(inbox / "alice" / f"p{k:03d}.jpg", width=640, height=480, seed=k)
        os.utime(p, (time.time() - 120,) * 2)  # settled: scan takes it
    db = tmp_path / name / "imgq.db"
    ids = imgq_subprocess("--db", str(db), "scan", str(inbox), cwd=tmp_path)
    assert ids.returncode == 0, ids.stderr
    r = imgq_subprocess("--db", str(db), "enqueue", "--op", CHAIN, "-", input=ids.stdout, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    r = imgq_subprocess("--db", str(db), "work", "-j1", "--drain", cwd=tmp_path)
    assert r.returncode == 0 and len(r.stdout.split()) == jobs, r.stderr
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


def test_a_worker_reuses_freed_image_memory_from_job_to_job(tmp_path):
    short, long = faults_of_a_run(tmp_path, "short", 10), faults_of_a_run(tmp_path, "long", 50)
    per_job = (long - short) / 40
    # 640x480 RGB is 225 pages an array; before: ~800 faults a job, after: ~60
    assert per_job < 250, f"{per_job:.0f} page faults a job (short run {short}, long run {long})"
