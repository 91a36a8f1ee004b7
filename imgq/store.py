"""The artifact store: where a job's outputs live, beside the database by default.

An attempt at a job never writes a final artifact name. It writes under a per-attempt
name carrying its lease token (``staged_path``), and the fenced transaction that
completes the job moves those files into place (``place``) after the token check and
before the commit. A worker that lost its lease (paused, cut off) therefore cannot
replace what the new lease holder completed and recorded; its staged files are removed
by itself (fenced) or by ``sweep_temp`` (killed).

A store belongs to one database: ``own`` writes the database's id into a marker at first
use and refuses a store another database owns.

Every file imgq writes on this machine goes through ``write_atomically`` (under a
``temp_name``, fsynced, checked, renamed into place; ``rename_noreplace`` where a name
must never be replaced), here in the base layer so that every layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO, TypeVar
from pathlib import Path

from imgq.errors import UsageError

TEMP_MARK = ".imgq-tmp"
# Longest name component imgq makes (ids, store folders, artifact names): far below the
# 255-byte limit of every file system, with room for suffixes (temporary names, "-N").
NAME_MAX = 120
_TEMP_PID = re.compile(r"\.(\d+)-[0-9a-f]+\.imgq-tmp$")
STAGED_MARK = ".imgq-staged"
_STAGED_TOKEN = re.compile(r"\.([0-9a-f]+)\.imgq-staged$")
OWNER_MARK = ".imgq-store"
T = TypeVar("T")


def temp_name(name: str) -> str:
    """The temporary name every imgq writer uses for ``name`` in the same folder:
    ".NAME.<pid>-<hex>.imgq-tmp" — hidden, skipped by scan, and its writer's pid lets a
    sweep tell a killed writer's leftover from a live one's file."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}"


def temp_writer(name: str) -> int | None:
    """The pid in a temporary name made by temp_name, or None."""
    m = _TEMP_PID.search(name)
    return int(m.group(1)) if m else None


def write_atomically(
    dest: str | os.PathLike,
    write: Callable[[BinaryIO], T],
    *,
    dir_fd: int | None = None,
    check: Callable[[Path | str], None] | None = None,
    replace: bool | Callable[[], bool] = True,
    sync: bool = True,
    mode: int = 0o644,
    make_folder: bool = True,
    sync_folder: bool | None = None,
) -> T:
    """The one way imgq writes a file: a reader never sees a partial one.

    ``write(f)`` fills a new file (``f``, binary, opened O_EXCL | O_NOFOLLOW) under
    ``temp_name`` beside ``dest``; it is flushed and fsynced, ``check(tmp)`` runs on the
    written temporary file (it raises to abandon it), then it is renamed onto ``dest``
    and the folder fsynced. Returns what ``write`` returned.

    ``dest`` is a path (its folder made if missing, unless ``make_folder=False``), or
    with ``dir_fd`` a plain name in that open folder (nothing on the way is followed).
    ``replace=False`` never replaces: ``rename_noreplace``, FileExistsError if the name
    is taken; a callable is asked right before the rename. ``sync=False`` skips both fsyncs;
    ``sync_folder=False`` only the folder's (the caller syncs it later, before it relies
    on the name: several files, one folder sync). Any exception removes the
    temporary file and propagates as it is (OSError included): callers word their errors.
    """
    if dir_fd is None:
        dest = Path(dest)
        folder, name = dest.parent, dest.name
        if make_folder:
            folder.mkdir(parents=True, exist_ok=True)
        tmp: Path | str = dest.with_name(temp_name(name))
    else:
        folder, name = None, os.fspath(dest)
        tmp = temp_name(name)
    made = False
    try:
        fd = os.open(tmp, _CREATE, mode, dir_fd=dir_fd)
        made = True
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if dir_fd is None else dir_fd
        try:
            if replace if isinstance(replace, bool) else replace():
                os.replace(os.path.basename(tmp), name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                rename_noreplace(dfd, os.path.basename(tmp), name)
            made = False
            if sync and sync_folder is not False:
                os.fsync(dfd)
        finally:
            if dfd != dir_fd:
                os.close(dfd)
    except BaseException:
        if made:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        raise
    return result


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


RENAME_NOREPLACE = 1
_renameat2 = None


def rename_noreplace(dir_fd: int, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` in one folder, never replacing anything: FileExistsError
    if ``dst`` (on a case-insensitive file system: any case of it) exists.

    renameat2(RENAME_NOREPLACE) where the file system has it; else link + unlink (link
    refuses an existing name); on file systems with neither (FAT through FUSE), a check
    right before a plain rename: the only window left is one no imgq writer enters, as
    every imgq writer takes a name this way."""
    global _renameat2
    if _renameat2 is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
    if _renameat2:
        import ctypes

        if _renameat2(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), dst)
    try:
        os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.stat(dst, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
    os.unlink(src, dir_fd=dir_fd)


def short_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it is at most ``limit`` bytes in UTF-8; else a prefix of it and a short
    hash of the whole name, together at most ``limit`` bytes (the hash keeps two long
    names that share a prefix apart)."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return name
    tail = "~" + hashlib.sha256(data).hexdigest()[:12]
    head = data[: limit - len(tail)].decode("utf-8", "ignore").rstrip("._-")
    return head + tail


def artifact_path(file_id: str, name: str, spec_hash: str, ext: str = "jpg") -> str:
    """Store-relative path of an artifact: one folder per file; the recipe's hash in the
    name keeps outputs of a changed recipe apart from the old ones. Each component is at
    most NAME_MAX bytes (a long id from an older version, a long artifact name)."""
    return f"{short_name(file_id)}/{short_name(name, NAME_MAX - 14 - len(ext))}-{spec_hash[:8]}.{ext}"


def staged_path(rel: str, token: str) -> str:
    """The per-attempt name of the store-relative artifact ``rel`` for the attempt holding
    lease ``token``: ".NAME.<token>.imgq-staged" in the same folder (hidden, so scan skips
    it; on the same filesystem, so moving it into place is one rename)."""
    folder, _, name = rel.rpartition("/")
    staged = f".{name}.{token}{STAGED_MARK}"
    return f"{folder}/{staged}" if folder else staged


_STAGED_IN_TEMP = re.compile(r"\.([0-9a-f]+)\.imgq-staged\.\d+-[0-9a-f]+\.imgq-tmp$")


def _staged_token_in_temp(name: str) -> str | None:
    """The lease token of the staged file a temporary name is being written for, or None."""
    m = _STAGED_IN_TEMP.search(name)
    return m.group(1) if m else None


def staged_token(name: str) -> str | None:
    """The lease token in a name made by staged_path, or None."""
    m = _STAGED_TOKEN.search(name)
    return m.group(1) if m else None


def place(store: Path, moves: Iterable[tuple[str, str]], *, sync: bool = True) -> set[Path]:
    """Move staged files onto their final names (store-relative ``(staged, final)``
    pairs), then fsync each folder once; returns the folders. Called only inside the
    fenced transaction that completes their job; an OSError leaves that transaction to
    roll the job back. ``sync=False`` leaves the fsyncs to the caller (``sync_folders``,
    before its commit), so a batch of jobs syncs its folders together."""
    folders = set()
    for staged, final in moves:
        os.replace(store / staged, store / final)
        folders.add((store / final).parent)
    if sync:
        sync_folders(folders)
    return folders


def sync_folders(folders: Iterable[Path]) -> None:
    """fsync ``folders`` (several at once: see ``sync_files``); raises the first OSError."""
    folders = list(dict.fromkeys(folders))
    failed = _sync_all([(f, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for f in folders])
    if failed:
        raise next(iter(failed.values()))


def _sync_all(paths: list[tuple[Path, int]]) -> dict[Path, OSError]:
    import concurrent.futures

    def sync(item: tuple[Path, int]) -> OSError | None:
        try:
            fd = os.open(item[0], item[1])
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            return e
        return None

    if len(paths) <= 1:
        errors = [sync(p) for p in paths]
    else:
        errors = list(_sync_pool(concurrent.futures).map(sync, paths))
    return {p: e for (p, _), e in zip(paths, errors) if e is not None}


SYNC_THREADS = 8
_POOL: tuple[int, object] | None = None  # (pid, executor): one pool per process, kept


def _sync_pool(futures):
    """The process's fsync threads, made on first use and kept: a pool per call started
    a thread per file each time (the fleet coordinator spent more of its loop starting
    threads than syncing). A forked child (local workers) makes its own: the parent's
    threads do not exist there."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), futures.ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="imgq-fsync"))
    return _POOL[1]


def sync_files(store: Path, names: Iterable[str]) -> dict[str, OSError]:
    """fsync the store files ``names`` (store-relative), several at once; returns those
    that could not be synced, with the error.

    A batch of jobs' outputs is made durable here just before the transaction that
    completes them: concurrent fsyncs share the file system's journal commits, where
    fsyncs one after another each wait for their own (on this machine 3-9 ms each, more
    than the work of a small job).
    """
    names = list(dict.fromkeys(names))
    failed = _sync_all([(store / n, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) for n in names])
    return {n: failed[store / n] for n in names if store / n in failed}


def discard(store: Path, names: Iterable[str]) -> None:
    """Remove staged files of an attempt that will not complete (fenced out, failed)."""
    for name in names:
        try:
            (store / name).unlink()
        except FileNotFoundError:
            pass


def sweep_temp(store: Path, *, older_than: float = 0.0, now: float | None = None, live: Callable[[str], bool] | None = None, recursive: bool = True) -> int:
    """Remove temporary files left by killed writers; returns how many.

    A temp name carries its writer's pid; a file whose writer is gone (on this host) or
    that is older than ``older_than`` seconds is removed. A live writer's file stays.

    ``recursive=False`` looks in ``store`` itself only (one photo's folder).

    With ``live`` (a lease token -> is it still the token of a leased job), staged files
    of attempts that no longer hold their lease are removed too. The question is asked
    per file, when it is found: a staged file exists only once its claim is committed,
    and a token that is not live now never will be again, so no live attempt loses one.
    """
    now = time.time() if now is None else now
    removed = 0
    if not store.is_dir():
        return 0
    for folder, dirs, names in os.walk(store):
        if not recursive:
            dirs[:] = [d for d in dirs if _SCRATCH_PID.match(d)]  # this folder only (its scratch folders still judged)
        for d in list(dirs):
            m = _SCRATCH_PID.match(d)
            if m is None:
                continue
            dirs.remove(d)  # never walked into: it goes whole, or stays whole
            try:
                old = older_than > 0 and now - (Path(folder) / d).stat().st_mtime > older_than
            except FileNotFoundError:
                continue
            if old or not pid_alive(int(m.group(1))):
                import shutil

                shutil.rmtree(Path(folder) / d, ignore_errors=True)
                removed += 1
        for name in names:
            path = Path(folder) / name
            if TEMP_MARK in name:
                pid = temp_writer(name)
                # the half-written output of an attempt: its lease token decides, not its pid
                # (pids are reused; a token that is not live now never will be again)
                token = _staged_token_in_temp(name)
                if token is not None and live is not None:
                    alive = live(token)
                else:
                    alive = pid is not None and pid_alive(pid)
                try:
                    old = older_than > 0 and now - path.stat().st_mtime > older_than
                    if alive and not old:
                        continue
                except FileNotFoundError:
                    continue
            elif live is not None and name.endswith(STAGED_MARK):
                token = staged_token(name)
                if token is not None and live(token):
                    continue
            else:
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


SCRATCH_MARK = ".imgq-scratch."
_SCRATCH_PID = re.compile(r"^\.imgq-scratch\.(\d+)-[0-9a-f]+$")


@contextlib.contextmanager
def scratch_dir(folder: str | os.PathLike | None):
    """A private folder for a writer's intermediate files (a video being encoded), on the
    same file system as ``folder`` (None: the system's temporary folder), removed on
    exit. Named ".imgq-scratch.<pid>-<hex>": hidden, and ``sweep_temp`` removes one
    whose writer was killed. Not /tmp by default: that may be memory (tmpfs), and a
    video's intermediates can be gigabytes."""
    import shutil
    import tempfile

    if folder is None:
        with tempfile.TemporaryDirectory(prefix="imgq-scratch-") as tmp:
            yield Path(tmp)
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{SCRATCH_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def own(store: Path, database_id: str, database: Path) -> None:
    """Make ``store`` this database's, or refuse it: UsageError if another database owns it.

    The first use writes the marker ``STORE/.imgq-store`` holding the database's id (and,
    for people, its path) without replacing one that exists (``write_atomically`` with
    replace=False), so of two databases starting at once exactly one wins. Two databases
    sharing a store would write the same artifact names and replace each other's results.
    """
    marker = store / OWNER_MARK
    mine = {"database_id": database_id, "database": str(Path(database).absolute())}
    try:
        store.mkdir(parents=True, exist_ok=True)
        try:
            text = marker.read_text()
        except FileNotFoundError:
            try:
                write_atomically(marker, lambda f: f.write((json.dumps(mine) + "\n").encode()), replace=False, mode=0o666)
            except FileExistsError:
                pass  # another process made it first: read whose it is
            text = marker.read_text()
    except OSError as e:
        raise UsageError(f"cannot use store {store}: {e.strerror or e}") from None
    try:
        theirs = json.loads(text)
        owner_id = theirs["database_id"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"store {store}: {marker} is not an imgq store marker; move it away if this store is yours") from None
    if owner_id != database_id:
        raise UsageError(
            f"store {store} belongs to database {theirs.get('database', '?')} (id {owner_id[:12]}), not to {mine['database']} (id {database_id[:12]}):"
            f" give each database its own store (store = in imgq.toml), or remove {marker} if that database is gone"
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_parts(store: Path, file_id: str, spec_hash: str) -> int:
    """Remove the stripes of a split image once its join is recorded; returns how many."""
    folder = store / file_id / "parts"
    removed = 0
    for path in [*folder.glob(f"*-{spec_hash[:8]}.*of*.npy"), *folder.glob(f"*-{spec_hash[:8]}.*of*.vpart")]:
        path.unlink(missing_ok=True)
        removed += 1
    try:
        folder.rmdir()
    except OSError:
        pass  # other recipes' stripes are still there
    return removed
