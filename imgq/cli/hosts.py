"""imgq hosts check HOSTS"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq.cli import common, helptext
from imgq.cli.options import AcceptNewOpt, ConnectTimeoutOpt, JsonOpt, RemoteImgqOpt, SshConfigOpt, host_entries
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


@app.command("check", epilog=CHECK_EPILOG, cls=helptext.Command)
def check(
    hosts: Annotated[Optional[list[str]], typer.Argument(help="Hosts as [user@]host[:port][/slots], comma- or space-separated.", metavar="HOSTS", show_default=False)] = None,
    hosts_file: Annotated[Optional[Path], typer.Option("--hosts-file", help="Also check the hosts listed in FILE (one per line).", metavar="FILE", show_default=False)] = None,
    remote_imgq: RemoteImgqOpt = "imgq",
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    connect_timeout: ConnectTimeoutOpt = None,
    json: JsonOpt = False,
) -> None:
    """Preflight: can each host do imgq's work?

    Connects over SSH (ssh_config aliases, keys, jump hosts; unknown host keys refused),
    starts `imgq agent` there and reads what it reports: the imgq version (must match
    this one), whether Pillow and OpenCV import, cores, free disk. The same check
    `imgq work --hosts` makes before giving a host any job. Exits 1 if any host fails.
    """
    found = host_entries(hosts or [], hosts_file, remote_imgq)
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
    common.exit_with(Exit.OK if all(r["ok"] for r in results) else Exit.SOME_FAILED)
