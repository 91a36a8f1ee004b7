"""bin/bench local: imgq against GNU parallel + vipsthumbnail, GNU parallel + ImageMagick
and a bare Pillow loop, side by side on the same camera-size photos, on this machine.

Every method makes the same two outputs per photo: fit 120x90 (thumb) and fit 640x480
(web), EXIF orientation applied, JPEG quality 85, with ``--jobs`` processes (default 2).
Methods run round-robin (imgq, vips, magick, bare, imgq, vips, ...) so a slow minute on a
shared machine hits all of them alike; the figure is the median of ``--repeat`` runs.
Each run writes into a fresh folder (and imgq into a fresh database); its outputs are
then checked: two per photo, the expected sizes, rotated photos upright.

Run as a script (``python bench_local.py bare LIST OUT --procs N``) it is the bare loop:
no queue, no journal, no verification, the floor imgq's overheads are measured against.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

THUMB = (120, 90)
WEB = (640, 480)
QUALITY = 85

# Camera sensor sizes, 12 to 24 MP (mean 18 MP, like the 17.6 MP set of DESIGN.md section 7).
SIZES = [(4000, 3000), (4608, 3456), (5472, 3648), (6000, 4000)]
OWNERS = ("alice", "bob", "carol")
SET_VERSION = 1  # bump when the way photos are generated changes: a new cache folder


# --------------------------------------------------------------------------- the photos


def _plan(count: int) -> list[dict]:
    plans = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        orientation = 6 if i % 5 == 1 else 1  # every fifth photo held sideways, across all sizes
        plans.append({
            "rel": f"{OWNERS[i % len(OWNERS)]}/IMG_{i + 1:04d}.jpg",  # unique base names: the
            "stored": [w, h],                                       # CLI tools name outputs by them
            "orientation": orientation,
            "upright": [h, w] if orientation >= 5 else [w, h],
            "seed": 7000 + i,
        })
    return plans


def _make_one(args) -> str:
    from datetime import datetime, timedelta

    from imgq import samples

    path, p, kind = args
    taken = datetime(2024, 5, 17, 8, 0) + timedelta(minutes=p["seed"] - 7000)
    w, h = p["stored"]
    if kind == "camera":
        samples.make_photo(path, width=w, height=h, seed=p["seed"], orientation=p["orientation"], taken=taken, quality=90)
        return path
    # "smooth": the sample picture drawn at a quarter of the size and upscaled, like the
    # upscaled wallpapers of DESIGN.md section 7: the same pixels count, little entropy.
    from PIL import Image

    uw, uh = p["upright"]
    upright = samples.render(uw // 4, uh // 4, p["seed"]).resize((uw, uh), Image.Resampling.BICUBIC)
    stored = upright.transpose(Image.Transpose.ROTATE_90) if p["orientation"] == 6 else upright
    exif = Image.Exif()
    exif[0x0112] = p["orientation"]
    exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    stored.save(tmp, "JPEG", quality=90, exif=exif.tobytes())
    os.replace(tmp, path)
    return path


def photo_set(work: Path, count: int, procs: int, kind: str = "camera") -> dict:
    """The cached set of ``count`` photos of ``kind`` under ``work`` (generated the first time)."""
    from bench_util import say

    folder = work / (f"photos-v{SET_VERSION}-n{count}" if kind == "camera" else f"photos-v{SET_VERSION}-{kind}-n{count}")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if all((folder / "inbox" / p["rel"]).is_file() for p in data["photos"]):
            data["inbox"] = str(folder / "inbox")
            return data
    plans = _plan(count)
    inbox = folder / "inbox"
    todo = [(str(inbox / p["rel"]), p, kind) for p in plans if not (inbox / p["rel"]).is_file()]
    say(f"generating {len(todo)} {kind} photos (12-24 MP, once) in {folder} with {procs} processes...")
    t0 = time.perf_counter()
    for path, _, _ in todo:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=procs) as pool:
        list(pool.map(_make_one, todo))
    past = time.time() - 3600  # comfortably older than any settle window of `imgq scan`
    for p in plans:
        os.utime(inbox / p["rel"], (past, past))
    for p in plans:
        p["bytes"] = (inbox / p["rel"]).stat().st_size
    data = {"version": SET_VERSION, "kind": kind, "photos": plans}
    manifest.write_text(json.dumps(data, indent=1))
    say(f"generated in {time.perf_counter() - t0:.0f} s")
    data["inbox"] = str(inbox)
    return data


def fit(size, box) -> tuple[int, int]:
    """Fit ``size`` in ``box`` keeping the aspect (the checker's own arithmetic, not imgq's)."""
    w, h = size
    s = min(box[0] / w, box[1] / h, 1.0)
    return max(1, round(w * s)), max(1, round(h * s))


def _warm(inbox: Path, photos: list[dict]) -> None:
    # Every method reads the originals from the page cache, none pays for the first read.
    for p in photos:
        with open(inbox / p["rel"], "rb") as f:
            while f.read(1 << 20):
                pass


# --------------------------------------------------------------------------- the methods
#
# Each returns {"wall": seconds, "outputs": {rel: {"thumb": path, "web": path}}, ...}.


def run_imgq(photos, inbox: Path, out: Path, jobs: int) -> dict:
    """What a user types: imgq scan INBOX | imgq enqueue - ; imgq work -jN --drain."""
    from bench_util import IMGQ, imgq_env

    db = out / "imgq.db"
    env = imgq_env()
    t0 = time.perf_counter()
    scan = subprocess.Popen([IMGQ, "scan", "--db", str(db), str(inbox)], cwd=out, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    enq = subprocess.Popen([IMGQ, "enqueue", "--db", str(db), "-"], cwd=out, env=env, stdin=scan.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scan.stdout.close()
    enq_err = enq.communicate()[1]
    scan_err = scan.communicate()[1]
    t1 = time.perf_counter()
    if scan.returncode or enq.returncode:
        raise RuntimeError(f"imgq scan|enqueue exited {scan.returncode}|{enq.returncode}: {scan_err.decode()[-400:]} {enq_err.decode()[-400:]}")
    work_started = time.time()  # wall clock, to compare with the journal's event times
    work = subprocess.run([IMGQ, "work", "--db", str(db), "-j", str(jobs), "--drain"], cwd=out, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t2 = time.perf_counter()
    work_ended = time.time()
    if work.returncode:
        raise RuntimeError(f"imgq work exited {work.returncode}: {work.stderr.decode()[-600:]}")
    outputs: dict[str, dict[str, str]] = {}
    conn = sqlite3.connect(db)
    try:
        store = out / "imgq-store"
        for rel, name, apath in conn.execute("SELECT f.path, a.name, a.path FROM artifacts a JOIN files f ON f.id = a.file_id"):
            outputs.setdefault(rel, {})[name] = str(store / apath)
        states = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        # when each worker completed its last job: a long spread means one core idled at the end
        per_worker = conn.execute(
            "SELECT actor, count(*), max(at) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY actor"
        ).fetchall()
        first_claim = conn.execute("SELECT min(at) FROM events WHERE entity = 'job' AND to_state = 'leased'").fetchone()[0]
    finally:
        conn.close()
    lasts = [r[2] for r in per_worker]
    return {"wall": t2 - t0, "scan_enqueue": t1 - t0, "work": t2 - t1, "outputs": outputs, "jobs": states,
            "jobs_per_worker": sorted(r[1] for r in per_worker), "finish_spread": (max(lasts) - min(lasts)) if len(lasts) > 1 else 0.0,
            # imgq work's three phases: start-up to the first claim, claiming and rendering, last job done to exit
            "work_phases": [first_claim - work_started, max(lasts) - first_claim, work_ended - max(lasts)] if lasts and first_claim else None}


def run_vips(photos, inbox: Path, out: Path, jobs: int) -> dict:
    """GNU parallel -jN vipsthumbnail: two calls per photo (it makes one size per call)."""
    lines = []
    for p in photos:
        src = str(inbox / p["rel"])
        for tag, box in (("thumb", THUMB), ("web", WEB)):
            lines.append(f"{src}\t{box[0]}x{box[1]}\t{out}/%s_{tag}.jpg[Q={QUALITY}]")
    listing = out / "jobs.tsv"
    listing.write_text("\n".join(lines) + "\n")
    argv = ["parallel", "--will-cite", "-q", "-j", str(jobs), "--halt", "now,fail=1", "--colsep", "\t", "-a", str(listing),
            "vipsthumbnail", "{1}", "-s", "{2}", "-o", "{3}"]
    wall = _run(argv, out)
    outputs = {p["rel"]: {tag: str(out / f"{Path(p['rel']).stem}_{tag}.jpg") for tag in ("thumb", "web")} for p in photos}
    return {"wall": wall, "outputs": outputs, "command": f"vipsthumbnail {{photo}} -s {{WxH}} -o {{out}}/%s_{{thumb|web}}.jpg[Q={QUALITY}]  (via parallel --will-cite -q -j{jobs})"}


def run_magick(photos, inbox: Path, out: Path, jobs: int, magick: list[str]) -> dict:
    """GNU parallel -jN ImageMagick: one call per photo writes web, then thumb from web."""
    lines = []
    for p in photos:
        stem = Path(p["rel"]).stem
        lines.append(f"{inbox / p['rel']}\t{out}/{stem}_web.jpg\t{out}/{stem}_thumb.jpg")
    listing = out / "jobs.tsv"
    listing.write_text("\n".join(lines) + "\n")
    # jpeg:size asks libjpeg for the smallest DCT scale still >= the web box, the same
    # reduced decode imgq uses; -auto-orient before resizing; -thumbnail drops metadata.
    argv = ["parallel", "--will-cite", "-q", "-j", str(jobs), "--halt", "now,fail=1", "--colsep", "\t", "-a", str(listing),
            *magick, "-define", f"jpeg:size={WEB[0]}x{WEB[1]}", "{1}", "-auto-orient",
            "-thumbnail", f"{WEB[0]}x{WEB[1]}>", "-quality", str(QUALITY), "-write", "{2}",
            "-thumbnail", f"{THUMB[0]}x{THUMB[1]}>", "{3}"]
    wall = _run(argv, out)
    outputs = {p["rel"]: {tag: str(out / f"{Path(p['rel']).stem}_{tag}.jpg") for tag in ("thumb", "web")} for p in photos}
    cmd = f"{os.path.basename(magick[-1])} (via parallel -j{jobs}) -define jpeg:size=640x480 {{photo}} -auto-orient -thumbnail '640x480>' -quality 85 -write {{web}} -thumbnail '120x90>' {{thumb}}"
    return {"wall": wall, "outputs": outputs, "command": cmd}


def run_bare(photos, inbox: Path, out: Path, jobs: int, *, decode_only: bool = False) -> dict:
    """This file as a script: a multiprocessing Pool of Pillow, no queue, no journal.
    ``decode_only``: only the DCT-scaled decode, no resize, no output: the ceiling."""
    from bench_util import PYTHON

    listing = out / "photos.txt"
    listing.write_text("\n".join(str(inbox / p["rel"]) for p in photos) + "\n")
    extra = ["--decode-only"] if decode_only else []
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, __file__, "bare", str(listing), str(out), "--procs", str(jobs), *extra], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"bare loop exited {proc.returncode}: {proc.stderr[-600:]}")
    inner = json.loads(proc.stdout)
    outputs = None if decode_only else {p["rel"]: {tag: str(out / f"{Path(p['rel']).stem}_{tag}.jpg") for tag in ("thumb", "web")} for p in photos}
    return {"wall": wall, "loop": inner["loop_seconds"], "outputs": outputs}


def _run(argv, cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} ... {argv[-10]} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}")
    return wall


# --------------------------------------------------------------------------- the bare loop


def _decode_one(task) -> None:
    """The ceiling decodes at the DCT scale imgq decodes at (its draft margin: a 1/4
    rather than 1/8 scale for the largest photos, which text and fine lines need to stay
    within 35 dB, tests/test_quality.py), so that "imgq / ceiling" compares like with like.
    The bare loop keeps the plain margin of a simple script."""
    from PIL import Image

    from imgq.imaging.pixels import DRAFT_MARGIN

    src, _ = task
    with Image.open(src) as im:
        sideways = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        web_size = fit((im.height, im.width) if sideways else im.size, WEB)
        need = (web_size[1], web_size[0]) if sideways else web_size
        im.draft("RGB", (round(need[0] * DRAFT_MARGIN), round(need[1] * DRAFT_MARGIN)))
        im.load()


def _bare_one(task) -> None:
    from PIL import Image, ImageOps

    src, out = task
    stem = Path(src).stem
    with Image.open(src) as im:
        orientation = im.getexif().get(0x0112, 1)
        sideways = orientation in (5, 6, 7, 8)
        upright = (im.height, im.width) if sideways else im.size
        web_size = fit(upright, WEB)
        im.draft("RGB", (web_size[1], web_size[0]) if sideways else web_size)  # DCT-scaled decode
        upright_im = ImageOps.exif_transpose(im)
    web = upright_im.resize(web_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    thumb = web.resize(fit(web.size, THUMB), Image.Resampling.LANCZOS)
    web.save(os.path.join(out, f"{stem}_web.jpg"), "JPEG", quality=QUALITY)
    thumb.save(os.path.join(out, f"{stem}_thumb.jpg"), "JPEG", quality=QUALITY)


def bare_main(argv=None) -> int:
    import multiprocessing as mp

    ap = argparse.ArgumentParser(prog="bench_local.py bare")
    ap.add_argument("listing")
    ap.add_argument("out")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--decode-only", action="store_true")
    a = ap.parse_args(argv)
    tasks = [(line, a.out) for line in Path(a.listing).read_text().splitlines() if line]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(a.procs) as pool:
        for _ in pool.imap_unordered(_decode_one if a.decode_only else _bare_one, tasks, chunksize=1):
            pass
    print(json.dumps({"loop_seconds": time.perf_counter() - t0, "photos": len(tasks)}))
    return 0


# --------------------------------------------------------------------------- checking


def check_outputs(photos, outputs: dict, *, upright_check: bool) -> list[str]:
    """Problems with a method's outputs (empty when every photo has both, right-sized)."""
    from PIL import Image

    from imgq.samples import is_upright

    problems = []
    for p in photos:
        got = outputs.get(p["rel"], {})
        for tag, box in (("thumb", THUMB), ("web", WEB)):
            path = got.get(tag)
            if not path or not os.path.isfile(path):
                problems.append(f"{p['rel']}: no {tag}")
                continue
            want = fit(p["upright"], box)
            with Image.open(path) as im:
                if abs(im.width - want[0]) > 1 or abs(im.height - want[1]) > 1:
                    problems.append(f"{p['rel']} {tag}: {im.width}x{im.height}, expected {want[0]}x{want[1]}")
                elif upright_check and p["orientation"] != 1 and not is_upright(im):
                    problems.append(f"{p['rel']} {tag}: not upright (EXIF orientation ignored)")
    return problems


# --------------------------------------------------------------------------- the part


# What the part needs to run here (bin/bench --check): Python modules, programs it cannot
# do without, programs whose methods are skipped when missing, root
NEEDS = {"modules": ["PIL", "numpy", "imgq.samples"], "programs": [], "optional": ["parallel", "vipsthumbnail", "convert"], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("local")
    g.add_argument("--photos", type=int, default=64, metavar="N", help="photos in the generated set (>= 24; default 64)")
    g.add_argument("--jobs", "-j", type=int, default=2, metavar="N", help="processes every local method uses (default 2)")
    g.add_argument("--photo-set", choices=("camera", "smooth"), default="camera",
                   help="camera: imgq.samples photos with sensor-like grain (default); smooth: drawn at 1/4 size and upscaled, "
                        "cheap to decode like the upscaled wallpapers of DESIGN.md section 7")
    g.add_argument("--methods", default="imgq,vips,magick,bare,decode", help="comma-separated subset of imgq,vips,magick,bare,decode (default: all)")


def cli_startup(repeat: int) -> float:
    """Median wall of ``imgq --version``: what each of the three commands pays to start."""
    from bench_util import IMGQ, imgq_env, median

    walls = []
    for _ in range(max(3, repeat)):
        t0 = time.perf_counter()
        subprocess.run([IMGQ, "--version"], env=imgq_env(), capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
    return median(walls)


def run(args, ctx) -> dict:
    from bench_util import CpuMeter, imagemagick, load_average, median, ratio, say

    work = Path(ctx["work"])
    procs = os.cpu_count() or 1
    data = photo_set(work, max(24, args.photos), procs, args.photo_set)
    photos, inbox = data["photos"], Path(data["inbox"])
    _warm(inbox, photos)
    mp_total = sum(p["stored"][0] * p["stored"][1] for p in photos) / 1e6
    magick_path, magick = imagemagick()
    have_parallel = shutil.which("parallel")

    methods = {
        "imgq": ("imgq scan | imgq enqueue - ; imgq work -j{j} --drain", lambda o: run_imgq(photos, inbox, o, args.jobs), None),
        "vips": ("parallel -j{j} vipsthumbnail (2 calls/photo)", lambda o: run_vips(photos, inbox, o, args.jobs),
                 None if have_parallel and shutil.which("vipsthumbnail") else "parallel or vipsthumbnail not installed"),
        "magick": ("parallel -j{j} ImageMagick jpeg:size (1 call/photo)", lambda o: run_magick(photos, inbox, o, args.jobs, magick),
                   None if have_parallel and magick else "parallel or ImageMagick not installed"),
        "bare": ("bare Pillow loop, {j} processes (no queue)", lambda o: run_bare(photos, inbox, o, args.jobs), None),
        "decode": ("ceiling: DCT-scaled decode only (imgq's scale), {j} processes", lambda o: run_bare(photos, inbox, o, args.jobs, decode_only=True), None),
    }
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in methods]
    if unknown:
        raise SystemExit(f"bench: unknown method(s) {unknown}; choose from {', '.join(methods)}")

    load_before = load_average()
    startup = cli_startup(args.repeat) if "imgq" in wanted else None
    results: dict[str, dict] = {}
    for name in wanted:
        label, _, skip = methods[name]
        results[name] = {"label": label.format(j=args.jobs), "runs": [], "skipped": skip, "problems": []}
    for r in range(args.repeat):
        for name in wanted:
            label, fn, skip = methods[name]
            if skip:
                continue
            out = work / "runs" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            say(f"local: {name} run {r + 1}/{args.repeat}...")
            meter = CpuMeter()
            try:
                res = fn(out)
            except Exception as e:  # a broken method is reported, the others still run
                results[name]["problems"].append(f"run {r + 1}: {e}")
                say(f"local: {name} FAILED: {e}")
                continue
            cpu = meter.stop()
            res["cpu"] = cpu["cpu_children"]
            res["others_share"] = cpu.get("others_share")
            outputs = res.pop("outputs")
            problems = [] if outputs is None else check_outputs(photos, outputs, upright_check=True)
            if problems:
                results[name]["problems"] += [f"run {r + 1}: {p}" for p in problems[:5]] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else [])
            results[name]["runs"].append(res)
            for key in ("command", "jobs"):
                if key in res:
                    results[name][key] = res[key]
    shutil.rmtree(work / "runs", ignore_errors=True)

    n = len(photos)
    for name, res in results.items():
        runs = res.pop("runs")
        walls = [x["wall"] for x in runs]
        res["walls"] = [round(w, 3) for w in walls]
        res["median_wall"] = median(walls)
        res["photos_per_s"] = n / res["median_wall"] if walls else None
        res["mp_per_s"] = mp_total / res["median_wall"] if walls else None
        res["cpu_ms_per_photo"] = 1000 * median([x["cpu"] for x in runs]) / n if runs else None
        shares = [x["others_share"] for x in runs if x.get("others_share") is not None]
        res["others_share_max"] = max(shares) if shares else None
        if name == "imgq" and walls:
            res["median_scan_enqueue"] = median([x["scan_enqueue"] for x in runs])
            res["median_work"] = median([x["work"] for x in runs])
            res["work_photos_per_s"] = n / res["median_work"]
            res["median_finish_spread"] = median([x["finish_spread"] for x in runs])
            res["jobs_per_worker"] = runs[-1]["jobs_per_worker"]
            phases = [x["work_phases"] for x in runs if x.get("work_phases")]
            res["median_work_phases"] = [median([ph[i] for ph in phases]) for i in range(3)] if phases else None
        if name in ("bare", "decode") and walls:
            res["median_loop"] = median([x["loop"] for x in runs])

    rate = lambda m: results.get(m, {}).get("photos_per_s")  # noqa: E731
    ratios = {
        "imgq / (parallel + vipsthumbnail)": ratio(rate("imgq"), rate("vips")),
        "imgq / (parallel + ImageMagick)": ratio(rate("imgq"), rate("magick")),
        "imgq / bare Pillow loop": ratio(rate("imgq"), rate("bare")),
        "imgq work alone / bare Pillow loop": ratio(results.get("imgq", {}).get("work_photos_per_s"), rate("bare")),
        "ceiling (decode only) / (parallel + vipsthumbnail)": ratio(rate("decode"), rate("vips")),
        "imgq / ceiling (decode only)": ratio(rate("imgq"), rate("decode")),
    }
    targets = [
        {"part": "local", "name": "imgq / (parallel + vipsthumbnail)", "value": ratios["imgq / (parallel + vipsthumbnail)"], "target": 5.0, "unit": "x"},
        {"part": "local", "name": "imgq / bare Pillow loop", "value": ratios["imgq / bare Pillow loop"], "target": 0.9, "unit": "x"},
    ]
    return {
        "photos": n,
        "photo_set": args.photo_set,
        "megapixels_total": round(mp_total, 1),
        "megapixels_mean": round(mp_total / n, 1),
        "rotated": sum(p["orientation"] != 1 for p in photos),
        "bytes_total": sum(p.get("bytes", 0) for p in photos),
        "jobs": args.jobs,
        "repeat": args.repeat,
        "magick": magick_path,
        "imgq_cli_startup_s": startup,
        "load_before": load_before,
        "methods": results,
        "ratios": ratios,
        "targets": targets,
    }


def render(res: dict) -> str:
    from bench_util import fmt, table

    n = res["photos"]
    head = (f"local: {n} {res.get('photo_set', 'camera')} JPEGs, {res['megapixels_mean']} MP mean (12-24 MP), {res['rotated']} stored rotated "
            f"(EXIF orientation 6), {res['bytes_total'] / 1e6:.0f} MB; each -> fit 120x90 + fit 640x480, q85; "
            f"{res['jobs']} processes; median of {res['repeat']} runs, methods interleaved")
    rows = []
    base = res["methods"].get("vips", {}).get("photos_per_s")
    busy = False
    for name, m in res["methods"].items():
        if m.get("skipped"):
            rows.append([m["label"], "-", "-", "-", "-", "-", "-", f"skipped: {m['skipped']}"])
            continue
        note = "ok" if not m["problems"] else f"PROBLEMS: {m['problems'][0]}"
        if name == "decode" and not m["problems"]:
            note = "(no outputs)"
        rel = f"{m['photos_per_s'] / base:.2f}x" if base and m.get("photos_per_s") else "-"
        others = m.get("others_share_max")
        busy |= bool(others and others > 0.1)
        rows.append([m["label"], fmt(m["median_wall"], 2), fmt(m["photos_per_s"]), fmt(m["mp_per_s"], 0), rel,
                     fmt(m["cpu_ms_per_photo"], 0), "-" if others is None else f"{100 * others:.0f}%", note])
    out = [head, "", table(["method", "wall s", "photos/s", "MP/s", "vs vips", "CPU ms/photo", "others' CPU", "outputs"], rows)]
    out.append("  CPU ms/photo: user+sys of the method's processes (insensitive to a busy machine); "
               "others' CPU: the most, over its runs, that other processes took of the machine")
    if busy:
        out.append("  WARNING: other processes used over 10% of the CPUs during some runs: wall times and ratios are disturbed")
    imgq = res["methods"].get("imgq")
    if imgq and imgq.get("median_work"):
        out.append(f"  imgq: scan|enqueue {imgq['median_scan_enqueue']:.2f} s + work {imgq['median_work']:.2f} s "
                   f"(work alone {imgq['work_photos_per_s']:.1f} photos/s); each imgq command starts in {res['imgq_cli_startup_s']:.2f} s "
                   f"(imgq --version)")
        out.append(f"  imgq: jobs {imgq.get('jobs')}, per worker {imgq.get('jobs_per_worker')}; the workers finished their last jobs "
                   f"{imgq['median_finish_spread']:.2f} s apart (one core idle meanwhile)")
        if imgq.get("median_work_phases"):
            a, b, c = imgq["median_work_phases"]
            out.append(f"  imgq work: {a:.2f} s from start to the first claim, {b:.2f} s claiming and rendering "
                       f"({n / b:.1f} photos/s), {c:.2f} s from the last job done to exit")
    for name in ("bare", "decode"):
        m = res["methods"].get(name, {})
        if m.get("median_loop"):
            out.append(f"  {name}: pool loop {m['median_loop']:.2f} s of {m['median_wall']:.2f} s wall (rest: interpreter start-up)")
    for name in ("vips", "magick"):
        m = res["methods"].get(name, {})
        if m.get("command"):
            out.append(f"  {name}: {m['command']}")
    out.append("")
    out.append(table(["ratio", "value"], [[k, "-" if v is None else f"{v:.2f}x"] for k, v in res["ratios"].items()]))
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        sys.exit(bare_main(sys.argv[2:]))
    sys.exit("usage: bench_local.py bare LIST OUT [--procs N]  (bin/bench runs the comparison)")
