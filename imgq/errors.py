"""The named exceptions imgq raises, and the exit codes the CLI turns them into.

Every error is classified where it is raised: ``Permanent`` means the input itself is
bad and retrying cannot help; ``Transient`` means the world was flaky (I/O, a host, a
full disk) and the queue retries with backoff. The queue reads the class, never the text.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Every exit status imgq gives, from one place (httpie's habit)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    INTERRUPTED = 130  # stopped by SIGINT (or asked to stop): 128 + SIGINT, as shells say
    TERMINATED = 143  # an agent stopped by SIGTERM: 128 + SIGTERM


class ImgqError(Exception):
    """Base of every error imgq raises on purpose; the message is for a person."""

    exit_code = Exit.SOME_FAILED


class Permanent(ImgqError):
    """Retrying cannot help: the input is bad."""


class Transient(ImgqError):
    """Retrying later may help: I/O, network, disk space, a lost host."""


class BadImage(Permanent):
    """Not a decodable image: corrupt, truncated, empty, not an image at all."""


class BadVideo(BadImage):
    """Not a playable video: corrupt, truncated, empty, not a video at all."""


class TooLarge(Permanent):
    """Over the pixel limit (decompression bomb or absurd size)."""


class UnknownOperation(Permanent):
    """An operation name or parameter that does not exist."""


class MissingExtra(Permanent):
    """An optional extra (imgq[heic], imgq[raw]) is needed and not installed."""


class NameTooLong(Permanent):
    """A path the file system refuses as too long (ENAMETOOLONG): retrying cannot help."""


class StorageError(Transient):
    """Writing or reading an artifact or a copy failed (disk full, I/O error)."""


class RouteFailed(Transient):
    """The route command (``route_command`` in imgq.toml) failed for a file, timed out, or
    answered something that is not a valid route: that file's archive waits and is retried."""


class HostUnreachable(Transient):
    """A host could not be reached or was lost."""


class SlurmError(ImgqError):
    """Slurm refused or failed a request (sbatch, squeue, scancel): its own message is kept."""


class InvalidTransition(ImgqError):
    """A state change that is not on the lifecycle diagram: always a bug."""


class UsageError(ImgqError):
    """The user asked for something that cannot be done as asked."""

    exit_code = Exit.USAGE


class NotFound(UsageError):
    """A file or job id that is not in the database."""


class BadDatabase(UsageError):
    """The file named as the database cannot be used as one: missing where only an existing
    database will do, a folder, not SQLite, damaged, or in a place that cannot be written.
    A usage error: the user named the wrong file (or ran in the wrong folder)."""


class NoDatabase(BadDatabase):
    """No database at the path, and the command only reads one (it never creates it)."""


class DatabaseBusy(Transient):
    """The database's write lock was not free within the time allowed (another process
    holds it: a stuck run, a sqlite3 shell with an open transaction)."""


class Busy(ImgqError):
    """Another run of the same step holds its lock."""

    exit_code = Exit.OK


def classify(exc: BaseException) -> str:
    """'permanent' or 'transient' for any exception; unknown ones are transient.

    OSErrors (disk full, I/O error, permission flapping on a share) are transient:
    the world may heal. Anything we did not expect is also retried, but only up to
    the job's max attempts, so a bug cannot loop forever.
    """
    if isinstance(exc, Permanent):
        return "permanent"
    return "transient"
