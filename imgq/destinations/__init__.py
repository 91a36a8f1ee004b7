"""Archive destinations: a local folder, or a folder on a host over SSH, behind one interface.

Every destination promises the same things (``base.Destination``):

- ``put``: a copy lands under a temporary name in the target folder, is flushed and
  fsynced, read back and its sha256 compared with what was meant to be written, and only
  then renamed into place (and the folder fsynced). A reader never sees a partial file
  under its final name, whatever kills us and when.
- ``check``: the size and sha256 of what is at a name now (read in full, not trusted
  from any cache), or None if nothing is there.
- ``free_bytes``: the space left.
- ``identity``: what the destination is, however it was spelled: the (device, inode) of a
  local root, or the random id in the ``.imgq-destination`` marker of a remote root.
- ``sweep_temps``: remove the temporary files of killed copies.

The rename into place never replaces anything: a final name (on a case-insensitive file
system, any case of it) holding another file raises ``NameTaken``; only a damaged copy
the caller proved to be its own (``replace``) is written over. A name the file system
refuses (FAT's ``:`` ``?``…, too long) raises ``NameRefused``.

Paths are relative to the destination root and always made of plain components (no
``..``, no ``/`` inside a component). Local folders are walked one component at a time
with ``O_NOFOLLOW``, so a symlink planted inside the archive can never take a write
outside of it. Over SSH the same walk is done with SFTP ``lstat``.

Errors: ``DestinationUnavailable`` (transient) when the whole destination cannot take
copies now: unreachable, not mounted, full. ``StorageError`` (transient) for a failure of
one copy. ``SourceUnavailable`` when the file to copy from is missing or no longer has
the content it should: the destination is not to blame.

Lives here: ``base`` (the interface, ``Found``, the errors, name checks, the no-replace
rename), ``local``, ``ssh``, ``physical`` (grouping destinations by identity) and
``resolve`` (which destinations are in force; opening them). May import ``imgq.errors``,
``imgq.store``, ``imgq.config`` and, for its transport, ``imgq.ssh``; never the
ledger, a step or the CLI.
"""

from imgq.destinations.base import (
    Destination,
    DestinationUnavailable,
    Found,
    NameRefused,
    NameTaken,
    SourceChanged,
    SourceUnavailable,
    check_component,
    hash_fd,
    is_safe_name,
)
from imgq.destinations.local import LocalDestination
from imgq.destinations.physical import Physical, physical
from imgq.destinations.resolve import canonical, close_all, configured, in_force, open_all, open_destination
from imgq.destinations.ssh import SshDestination, SshOptions, parse_ssh_url

__all__ = [
    "Destination",
    "DestinationUnavailable",
    "Found",
    "LocalDestination",
    "NameRefused",
    "NameTaken",
    "Physical",
    "SourceChanged",
    "SourceUnavailable",
    "SshDestination",
    "SshOptions",
    "canonical",
    "check_component",
    "close_all",
    "hash_fd",
    "in_force",
    "configured",
    "is_safe_name",
    "open_all",
    "open_destination",
    "parse_ssh_url",
    "physical",
]
