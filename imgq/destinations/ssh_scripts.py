"""The shell scripts an ``ssh://`` destination runs on its host (a POSIX shell and
coreutils there) to write, check, sync, measure and sweep its copies, and the reading of
their "SIZE SHA256" answers. Paths arrive as arguments, never inside a script.

Scripts hash with ``h256`` (stdin to "HEX ..." on stdout), a shell function put before
each script (``h256_function``): coreutils' ``sha256sum``, or OpenSSL's where it is
installed and proves right on a known input (``H256_PROBE``). Both read the same bytes
and answer the same sha256; OpenSSL uses the CPU's SHA instructions and is several times
faster, and hashing every byte twice (written, then checked) is most of what a copy
costs the host.
"""

from __future__ import annotations

import re

from imgq.destinations.base import Found

# `printf abc | ...`: the sha256 of "abc" (FIPS 180-2's first example) tells a working
# OpenSSL from a missing or broken one
H256_PROBE = "printf abc | openssl dgst -sha256 -r 2>/dev/null"
_ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def h256_function(probe_answer: str | None) -> str:
    """The ``h256`` shell function for a host whose answer to ``H256_PROBE`` was
    ``probe_answer`` (None: not asked): OpenSSL's sha256 if it answered right, else
    coreutils' sha256sum."""
    if probe_answer is not None and probe_answer.split()[:1] == [_ABC_SHA256]:
        return "h256() { openssl dgst -sha256 -r; }\n"
    return "h256() { sha256sum; }\n"

# Run by `sh -c SCRIPT sh ROOT REL...`: one line per REL, "SIZE SHA256", or "-" when there
# is no regular file there or a folder on the way is a symlink (never read through one, as
# the local walk with O_NOFOLLOW). Paths arrive as arguments, never inside the script.
_CHECK_SCRIPT = r"""
root=$1
shift
for rel do
  p=$root
  rest=$rel
  ok=1
  while :; do
    case $rest in */*) ;; *) break ;; esac
    p="$p/${rest%%/*}"
    rest=${rest#*/}
    if [ -h "$p" ] || [ ! -d "$p" ]; then ok=0; break; fi
  done
  f="$p/$rest"
  if [ $ok = 1 ] && [ -f "$f" ] && [ ! -h "$f" ]; then
    s=$(wc -c < "$f") && h=$(h256 < "$f") && echo "$s ${h%% *}" || echo "!"
  else
    echo "-"
  fi
done
"""
# A copy's bytes, on stdin, into its temporary name, fsynced (dd's conv=fsync: written and
# synced by one program), read back and reported as _CHECK_SCRIPT does, all in one command
# (each program started costs the host a fork and an exec, so there are few): `sh -c SCRIPT sh FOLDER NAME TEMP OFFSET`. With OFFSET 0 the killed
# copies of NAME in FOLDER are removed and TEMP is created (never over an existing file:
# noclobber, O_EXCL; by `true`, not `:`, whose failed redirection would end the shell
# before it can say why); otherwise TEMP is a killed copy's part of exactly OFFSET bytes that
# the bytes continue. Exit 4: TEMP cannot be created (a name the file system refuses), 5:
# the bytes cannot be written (full?), 6: the part to continue is not what it was.
_PUT_SCRIPT = r"""
set -C
f=$1/$3
if [ "$4" = 0 ]; then
  for t in "$1"/."$2".*.imgq-tmp; do
    if [ "$t" != "$f" ] && { [ -f "$t" ] || [ -h "$t" ]; }; then rm -f -- "$t"; fi
  done
  true > "$f" || exit 4
elif [ -h "$f" ] || [ ! -f "$f" ] || [ "$(wc -c < "$f")" -ne "$4" ]; then
  echo "the part of a killed copy to be continued changed" >&2
  exit 6
fi
dd of="$f" bs=1M iflag=fullblock oflag=append conv=notrunc,fsync status=none || exit 5
r=$(wc -c < "$f" && h256 < "$f") && set -- $r && echo "$1 $2"
"""
# sha256 of the first $2 bytes of $1: the part of a killed copy to be continued
_PREFIX_SCRIPT = r"""head -c "$2" -- "$1" | h256"""
_SYNC_DIR_SCRIPT = r"""for d do sync -- "$d" 2>/dev/null || { sync; break; }; done"""
_DF_SCRIPT = r"""df -Pk -- "$1" | tail -n 1"""
# Temporary names of killed copies, up to the depth imgq writes at, never through a
# symlink (find -P); the writer's pid is another machine's, so age tells ($2 minutes).
_SWEEP_SCRIPT = r"""
find "$1" -mindepth 1 -maxdepth "$3" -type f -name '.*.imgq-tmp' -mmin "+$2" -print -delete 2>/dev/null
exit 0
"""


def _parse_found(line: str) -> Found | None:
    m = re.fullmatch(r"(\d+) ([0-9a-f]{64})", line.strip())
    return Found(int(m.group(1)), m.group(2)) if m else None
