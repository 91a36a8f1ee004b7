"""A destination that is a folder on a host reached over SSH: ``ssh://[user@]host[:port]/path``.
Here is its copy logic (put, check, fetch, list, remove, sweep); the connection, URL and
marker are imgq.destinations.ssh_folder, the scripts run on the host ssh_scripts.

A copy's bytes go to a program that stays running on the host for the connection
(``ssh_receiver``, run by the host's python3), which writes them under the temporary
name, fsyncs, reads them back and answers size and sha256: writing and verifying a copy
is one round trip and starts no program. A host without python3 gets one command per
copy instead (``_PUT_SCRIPT``: ``dd`` into the temporary name with ``conv=fsync``, then
the read-back through the host's sha256). Folders are made, and files renamed into
place, over SFTP. Checks hash there too (the host needs a POSIX shell and coreutils; see
``SshFolder`` for which sha256 program). Folders are walked with SFTP ``lstat``, never
through a symlink. What the destination is (``identity``) is the random id in the
``.imgq-destination`` marker file written in its root at first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import stat
from collections.abc import Iterable
from pathlib import Path

from imgq.destinations.base import (
    CHECK_BATCH,
    CHUNK,
    REMOTE_TEMP_AGE,
    SWEEP_DEPTH,
    Destination,
    DestinationUnavailable,
    Found,
    NameRefused,
    NameTaken,
    SourceUnavailable,
    copy_hashing,
    is_safe_name,
    is_temp_name,
    is_temp_of,
    open_source,
    source_changed,
    split_rel,
)
from imgq.destinations.ssh_folder import SshFolder, SshOptions, parse_ssh_url
from imgq.destinations.ssh_scripts import (
    _CHECK_SCRIPT,
    _DF_SCRIPT,
    _PREFIX_SCRIPT,
    _PUT_SCRIPT,
    _SWEEP_SCRIPT,
    _SYNC_DIR_SCRIPT,
    _parse_found,
)
from imgq.destinations.ssh_receiver import Receiver
from imgq.errors import HostUnreachable, ImgqError, StorageError
from imgq.store import temp_name

__all__ = ["RESUME_MIN", "SshDestination", "SshFolder", "SshOptions", "parse_ssh_url"]

RESUME_MIN = 1 << 20  # a killed copy's part this long or longer is continued, not sent again


class _Sink:
    """What copy_hashing writes to: the stdin of the command that writes the copy."""

    def __init__(self, write):
        self.write = write


class SshDestination(SshFolder, Destination):
    """A folder on a host reached over SSH (Fabric): files travel to a receiver on the host
    (or the stdin of a command) that writes, syncs and hashes them there; folders and
    renames go over SFTP. Needs a POSIX shell and coreutils on the host, and is faster
    with python3 there."""

    # Copies at once: each thread has a connection of its own (SshFolder), so sshd's
    # MaxSessions is no limit; its MaxStartups (10 by default) is: more connections than
    # that opened at once are refused at random while they authenticate.
    max_transfers = 8
    _folder_fsync: bool | None = None  # can its SFTP server fsync a folder? None: not tried yet
    _no_receiver = False  # True once the host proved to have no python3 for ssh_receiver

    def identity(self) -> str:
        self._connect()
        return self._identity

    def sweep_temps(self, *, now: float) -> list[str]:
        minutes = int(REMOTE_TEMP_AGE // 60)
        r = self._sh(_SWEEP_SCRIPT, [self.root, str(minutes), str(SWEEP_DEPTH)], "removing temporary files of killed copies")
        out = []
        for line in r.stdout.decode(errors="surrogateescape").splitlines():
            if line.startswith(self.root + "/"):
                out.append(line[len(self.root) + 1 :])
        return out

    def put(self, source, rel: str, *, sha256: str, size: int, replace: Found | None = None) -> None:
        parts = split_rel(rel)
        name = parts[-1]
        folder = self._make_dir(parts[:-1])
        conn, sftp = self._connect()
        final = f"{folder}/{name}"
        # not store.write_atomically: the file is on another host, written, synced, read
        # back and hashed there (ssh_receiver or _PUT_SCRIPT: same steps, same temp name)
        tmp_name = temp_name(name)
        tmp = f"{folder}/{tmp_name}"
        # a killed copy of this name, big enough to be worth continuing, becomes ours now;
        # smaller ones are removed by the command that writes the copy (no listing needed)
        resume = self._take_over_part(sftp, folder, name, tmp, size) if size > RESUME_MIN else 0
        try:
            with open_source(source) as src:
                h, start = self._resumable(sftp, src, tmp, resume, rel) if resume else (hashlib.sha256(), 0)
                shown = str(getattr(source, "shown", source))
                try:
                    status, said, got, (written, digest) = self._send(
                        conn, folder, name, tmp_name, start, lambda write: copy_hashing(src, _Sink(write), shown, h=h, n=start), size
                    )
                except HostUnreachable as e:
                    self._drop_mine()
                    raise DestinationUnavailable(f"{self.url}: {e} while writing {rel}") from e
            if status == 4:
                if not is_safe_name(name):
                    raise NameRefused(f"{self.url}: the destination cannot hold the name {name!r} ({said})")
                raise StorageError(f"{self.url}: cannot write {rel}: {said or 'cannot create it'}")
            if status == 5:
                if self._full(size):
                    raise DestinationUnavailable(f"{self.url}: no space left for {rel} ({size} bytes)")
                raise StorageError(f"{self.url}: {said or 'a write failed'} while writing {rel}")
            if status == 6:
                raise StorageError(f"{self.url}: {said} while continuing {rel}")
            if (written, digest) != (size, sha256):
                raise source_changed(source, written, digest, size, sha256)
            if status != 0 or got is None:
                raise StorageError(f"{self.url}: cannot verify {rel}: {said or 'no answer'} (the host needs python3, or sh, dd, wc and sha256sum)")
            if got != Found(size, sha256):
                raise StorageError(f"{self.url}: {rel} did not verify after writing (read back {got.bytes} bytes, sha256 {got.sha256[:12]}…)")
            self._rename_into_place(sftp, tmp, final, rel, replace)
            deferred = getattr(self._mine, "folders", None)
            if deferred is None:
                self._sync_folders([folder])
            else:
                deferred.add(folder)  # synced once for all, before the caller records (deferring_folder_syncs)
        except BaseException:
            try:
                if self._alive():
                    sftp.remove(tmp)
            except Exception:
                pass
            raise

    def _send(self, conn, folder: str, name: str, tmp_name: str, start: int, feed, size: int):
        """Write one copy's bytes (``feed(write)``) to ``folder/tmp_name`` on the host,
        continuing a part of ``start`` bytes, fsynced and read back there: (exit code as
        _PUT_SCRIPT's, what the host said, what it read back, what ``feed`` returned). By
        this connection's receiver (ssh_receiver: no program started per copy), or where
        the host has no python3, by _PUT_SCRIPT (a command per copy)."""
        from imgq import ssh as remote

        receiver = self._receiver(conn)
        if receiver is not None:
            return receiver.put(folder, name, tmp_name, start, feed)
        r, fed = remote.run_feeding(conn, ["sh", "-c", self._script(_PUT_SCRIPT, size=size), "sh", folder, name, tmp_name, str(start)], feed, timeout=600.0)
        got = _parse_found(r.stdout.decode(errors="replace").strip())
        return (r.exit_status, r.stderr.decode(errors="replace").strip(), got, fed)

    def _receiver(self, conn) -> Receiver | None:
        """This thread's receiver on the host, started on its connection at first use;
        None once the host proved to have no python3 for it."""
        if self._no_receiver:
            return None
        mine = self._mine
        rec = getattr(mine, "receiver", None)
        if rec is not None and rec.link is mine.link and rec.alive:
            return rec
        if rec is not None:
            rec.close()
        mine.receiver = rec = Receiver.start(conn, mine.link)
        if rec is None:
            self._no_receiver = True
        return rec

    def _take_over_part(self, sftp, folder: str, name: str, tmp: str, size: int) -> int:
        """The largest killed copy of ``name`` in ``folder`` (1 MiB or more, smaller than
        ``size``) renamed to ``tmp``: its length, or 0 if there is none. The other killed
        copies of the name are removed."""
        resume = 0
        try:
            leftovers = sorted((e for e in sftp.listdir_attr(folder) if is_temp_of(e.filename, name)), key=lambda e: -(e.st_size or 0))
            for entry in leftovers:  # a killed copy's: the largest is continued, the rest go
                left = f"{folder}/{entry.filename}"
                if not resume and RESUME_MIN <= (entry.st_size or 0) < size and stat.S_ISREG(entry.st_mode or 0):
                    try:
                        sftp.rename(left, tmp)  # ours now (plain rename: never onto a name in use)
                        resume = entry.st_size
                        continue
                    except OSError:
                        pass
                sftp.remove(left)
        except Exception as e:
            raise self._error(e, f"listing {folder}") from e
        return resume

    @contextlib.contextmanager
    def deferring_folder_syncs(self):
        """Puts on this thread inside leave their folder's sync to the end of the block,
        where each folder is synced once, in one command: a file's copies (original and
        artifacts, one folder) cost one sync, not one each. Whoever records the copies
        does so after the block, so nothing is recorded before its folder is synced."""
        self._mine.folders = folders = set()
        try:
            yield
        finally:
            self._mine.folders = None
            if folders:
                self._sync_folders(sorted(folders))

    def _sync_folders(self, folders: list[str]) -> None:
        """fsync each folder (its new names on disk). Over SFTP where the server can:
        OpenSSH's sftp-server opens a folder like a file and fsyncs the handle
        (fsync@openssh.com), one round trip each and no command started; else with
        ``sync FOLDER`` run there. Any doubt (refused, unsupported) falls back to the command."""
        from paramiko.sftp import CMD_EXTENDED

        _, sftp = self._connect()
        if self._folder_fsync is not False:
            try:
                for d in folders:
                    with sftp.open(d, "r") as handle:
                        sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
                self._folder_fsync = True
                return
            except Exception as e:
                if not self._alive():
                    raise self._error(e, "syncing folders") from e
                if self._folder_fsync is None:
                    self._folder_fsync = False  # this server cannot: the command from now on
        self._sh(_SYNC_DIR_SCRIPT, folders, "syncing folders")

    def _resumable(self, sftp, src, tmp: str, length: int, rel: str):
        """(the sha256 of what of ``src`` is at ``tmp`` already, its length): a killed
        copy's first ``length`` bytes are kept only if the host hashes them to what ours
        hash to; otherwise ``tmp`` is removed and the copy starts over (a fresh hash, 0).
        The whole file is still verified there before it is renamed into place."""
        h = hashlib.sha256()
        n = 0
        while n < length:
            try:
                chunk = src.read(min(CHUNK, length - n))
            except OSError as e:
                raise SourceUnavailable(f"cannot read {getattr(src, 'name', 'the source')}: {e.strerror or e}") from e
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if n == length:
            r = self._sh(_PREFIX_SCRIPT, [tmp, str(length)], f"checking the part of {rel} a killed copy left")
            if r.exit_status == 0 and r.stdout.decode(errors="replace").split()[:1] == [h.hexdigest()]:
                try:
                    sftp.truncate(tmp, length)
                    return h, length
                except Exception as e:
                    raise self._error(e, f"continuing {rel}") from e
        try:
            src.seek(0)
            sftp.remove(tmp)
        except Exception as e:
            raise self._error(e, f"starting {rel} over") from e
        return hashlib.sha256(), 0

    def _rename_into_place(self, sftp, tmp: str, final: str, rel: str, replace: Found | None) -> None:
        """SFTP's plain rename (not posix-rename) never replaces: OpenSSH's server links
        and unlinks, or where the file system has no links (FAT) renames only if the name
        is free. A damaged copy proven to be this item's (``replace``) is replaced."""
        try:
            if replace is not None and self.check([rel])[rel] == replace:
                sftp.posix_rename(tmp, final)
            else:
                sftp.rename(tmp, final)
            return
        except ImgqError:
            raise
        except Exception as e:
            err = self._error(e, f"renaming {rel} into place")
            if type(err) is not StorageError:
                raise err from e
            try:
                sftp.lstat(final)
            except FileNotFoundError:
                raise err from e
            except Exception as e2:
                raise self._error(e2, f"renaming {rel} into place") from e
            raise NameTaken(f"{self.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it") from e

    def _full(self, size: int) -> bool:
        try:
            return self.free_bytes() < max(size, 1)
        except ImgqError:
            return False

    def check(self, rels: Iterable[str]) -> dict[str, Found | None]:
        rels = list(rels)
        out: dict[str, Found | None] = {}
        _, sftp = self._connect()
        there = []
        for rel in rels:
            split_rel(rel)
            try:
                sftp.lstat(self._abs(rel))
            except FileNotFoundError:
                out[rel] = None  # nothing there: an SFTP round trip says so, no command needed
                continue
            except Exception:
                pass  # the command below decides, or says what is wrong
            there.append(rel)
        for i in range(0, len(there), CHECK_BATCH):
            batch = there[i : i + CHECK_BATCH]
            r = self._sh(_CHECK_SCRIPT, [self.root, *batch], "checking copies")
            lines = r.stdout.decode(errors="replace").splitlines()
            if r.exit_status == 127 or len(lines) != len(batch):
                raise StorageError(f"{self.url}: cannot check copies: {r.stderr.decode(errors='replace').strip() or 'unexpected answer'} (the host needs sh, wc and sha256sum)")
            for rel, line in zip(batch, lines):
                if line == "!":
                    raise StorageError(f"{self.url}: cannot read {rel}")
                out[rel] = None if line == "-" else _parse_found(line)
        return {rel: out[rel] for rel in rels}

    def fetch(self, rel: str, local: Path) -> None:
        _, sftp = self._connect()
        try:
            with sftp.open(self._abs(rel), "rb") as src, open(local, "xb") as out:
                src.prefetch()
                copy_hashing(src, out)
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.url}: {rel} is missing") from e
        except Exception as e:
            raise self._error(e, f"downloading {rel}") from e

    def listdir(self, rel: str, *, folders: bool = False) -> list[str]:
        _, sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._abs(rel))
        except FileNotFoundError:
            return []
        except Exception as e:
            raise self._error(e, f"listing {rel}") from e
        wanted = stat.S_ISDIR if folders else stat.S_ISREG
        return sorted(e.filename for e in entries if wanted(e.st_mode or 0) and not is_temp_name(e.filename))

    def remove(self, rel: str) -> None:
        _, sftp = self._connect()
        try:
            sftp.remove(self._abs(rel))
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self._error(e, f"removing {rel}") from e

    def free_bytes(self) -> int:
        r = self._sh(_DF_SCRIPT, [self.root], "asking for free space")
        fields = r.stdout.decode(errors="replace").split()
        try:
            return int(fields[3]) * 1024
        except (IndexError, ValueError):
            raise StorageError(f"{self.url}: cannot read free space from df: {r.stdout!r} {r.stderr!r}")
