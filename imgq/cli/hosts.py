"""imgq hosts check HOSTS"""

from __future__ import annotations

import concurrent.futures
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from typing import TYPE_CHECKING

from imgq.fleet import hosts as hosts_lib

if TYPE_CHECKING:
    from imgq.fleet import coordinator as fleet
from imgq.cli import common
from imgq.errors import Exit, UsageError

app = typer.Typer(
    help="Check the hosts `imgq work --hosts` would use.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CHECK_EPILOG = """\b
Examples:
  imgq hosts check gpu1,gpu2/8 alice@render3:2222
  imgq hosts check --hosts-file hosts.txt
  imgq hosts check gpu1 --remote-imgq /opt/imgq/venv/bin/imgq --json
"""

RemoteImgqOpt = Annotated[str, typer.Option("--remote-imgq", help="The command that runs imgq on the hosts (a hosts-file line may give its own).", metavar="COMMAND")]
SshConfigOpt = Annotated[Optional[Path], typer.Option("--ssh-config", help="ssh_config file to use instead of ~/.ssh/config (like ssh -F).", metavar="FILE", show_default=False)]
AcceptKeysOpt = Annotated[bool, typer.Option("--accept-new-host-keys", help="Trust and record the key of a host not yet in known_hosts (like StrictHostKeyChecking=accept-new). A changed key is always refused.")]
ConnectTimeoutOpt = Annotated[Optional[float], typer.Option("--connect-timeout", help="Seconds to wait for a host to answer (default: ConnectTimeout from ssh_config, else 10).", min=0.5, metavar="SECONDS", show_default=False)]


def _command(remote_imgq: str) -> tuple[str, ...]:
    try:
        command = tuple(shlex.split(remote_imgq))
    except ValueError as e:
        raise UsageError(f"--remote-imgq {remote_imgq!r}: {e}") from None
    if not command:
        raise UsageError("--remote-imgq cannot be empty")
    return command


def entries(hosts: list[str], hosts_file: Optional[Path], remote_imgq: str) -> list[hosts_lib.HostEntry]:
    """The hosts named on the command line and in the file (the first of a name wins)."""
    command = _command(remote_imgq)
    found = hosts_lib.parse_hosts(hosts_lib.split_hosts_option(hosts), remote_imgq=command)
    if hosts_file is not None:
        found += hosts_lib.read_hosts_file(hosts_file, remote_imgq=command)
    unique: dict[str, hosts_lib.HostEntry] = {}
    for e in found:
        unique.setdefault(e.name, e)
    return list(unique.values())


def fleet_options(*, hosts: list[str], hosts_file: Optional[Path], remote_imgq: str, **kw) -> "fleet.FleetOptions":
    """``imgq work``'s host options as the fleet's; the hosts file is read again while it runs."""
    if hosts_file is not None and not hosts_file.is_file():
        raise UsageError(f"--hosts-file {hosts_file}: no such file")
    shared_root = kw.get("shared_root")
    if shared_root is not None and not shared_root.is_dir():
        raise UsageError(f"--shared-root {shared_root}: no such folder")
    from imgq import fleet  # the SSH stack loads only when hosts are used

    return fleet.FleetOptions(hosts=entries(hosts, None, remote_imgq), hosts_file=hosts_file, remote_imgq=_command(remote_imgq), **kw)


@app.command("check", epilog=CHECK_EPILOG)
def check(
    hosts: Annotated[Optional[list[str]], typer.Argument(help="Hosts as [user@]host[:port][/slots], comma- or space-separated.", metavar="HOSTS", show_default=False)] = None,
    hosts_file: Annotated[Optional[Path], typer.Option("--hosts-file", help="Also check the hosts listed in FILE (one per line).", metavar="FILE", show_default=False)] = None,
    remote_imgq: RemoteImgqOpt = "imgq",
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptKeysOpt = False,
    connect_timeout: ConnectTimeoutOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Preflight: can each host do imgq's work?

    Connects over SSH (ssh_config aliases, keys, jump hosts; unknown host keys refused),
    starts `imgq agent` there and reads what it reports: the imgq version (must match
    this one), whether Pillow and OpenCV import, cores, free disk. The same check
    `imgq work --hosts` makes before giving a host any job. Exits 1 if any host fails.
    """
    found = entries(hosts or [], hosts_file, remote_imgq)
    if not found:
        raise UsageError("no hosts to check: name some, or give --hosts-file")
    kw = dict(ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys, connect_timeout=connect_timeout)
    with concurrent.futures.ThreadPoolExecutor(min(16, len(found))) as pool:
        from imgq.fleet import link

        results = list(pool.map(lambda e: link.check(e, slots=e.spec.slots, **kw), found))
    for r in results:
        if json:
            common.out_json(r)
        elif r["ok"]:
            libs = ", ".join(f"{k} {v}" for k, v in sorted((r.get("libs") or {}).items()))
            common.out(f"{r['host']}: ok: imgq {r['version']}, {r['cores']} cores, {r['slots']} slots, {r['free_disk'] // 2**20} MB free, {libs}")
        else:
            common.out(f"{r['host']}: FAILED ({r['stage']}): {r['problem']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(int(Exit.SOME_FAILED))
