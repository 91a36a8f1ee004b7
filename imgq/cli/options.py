"""The options several commands share, declared once: database and settings, output,
the step lock, destinations, SSH (config file, host keys) and the hosts of the fleet.

A default that is a setting is shown from ``config.DEFAULTS``, never written out again.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from imgq.config import DEFAULTS
from imgq.errors import UsageError

if TYPE_CHECKING:
    from imgq.fleet import coordinator
    from imgq.fleet.hosts import HostEntry

DbOpt = Annotated[
    Optional[str],
    typer.Option("--db", help="Database file (default: a --db before the command, else $IMGQ_DB, else ./imgq.db).", metavar="PATH", show_default=False),
]
ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", help="Settings file (default: a --config before the command, else the first of $IMGQ_CONFIG, ./imgq.toml, ~/.config/imgq/imgq.toml, /etc/imgq/imgq.toml).", metavar="PATH", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON object per line to stdout instead of ids.")]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait/--no-wait", help="If another run of this step holds its lock: wait for it, or exit 0 quietly (default)."),
]

TransfersOpt = Annotated[
    Optional[int],
    typer.Option("--transfers", help="Copies each destination makes at once (default: transfers in imgq.toml, else 4); the destinations proceed independently.", min=1, metavar="N", show_default=False),
]


def dry_run_option(what: str):
    """--dry-run/-n (as make and rsync): ``what`` says what is shown instead of done."""
    return typer.Option("--dry-run", "-n", help=f"Change nothing (no database made or written, no file written or deleted); {what} Ends with 'dry run: nothing changed' on stderr.")


IdsArg = "[IDS | -]"  # the metavar of every ids argument (`-` reads them from stdin)


def completes(kind: str):
    """An ``autocompletion`` for a parameter whose values come from the project: ``kind``
    is one of ``imgq.completion.KINDS`` (recipes, ops, ids, failed-ids). bin/gen-docs reads
    it (``.values``) and makes the generated completions ask ``imgq complete-values KIND``."""

    def complete(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
        from imgq import completion

        params = ctx.params if ctx is not None else {}
        return completion.values(kind, incomplete, db=params.get("db"), config=params.get("config"))

    complete.values = kind  # type: ignore[attr-defined]
    return complete


# -- destinations (archive, collect, run) ---------------------------------------------------
ToOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--to",
        help="A destination: a local folder or ssh://[user@]host[:port]/path (repeatable). Default: `destinations` in imgq.toml.",
        metavar="DEST",
        show_default=False,
    ),
]

# -- SSH (destinations and hosts alike) -----------------------------------------------------
SshConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--ssh-config", help="OpenSSH client config to use instead of ~/.ssh/config (like ssh -F).", metavar="FILE", show_default=False, dir_okay=False),
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Trust and record the key of a host not yet in known_hosts (like StrictHostKeyChecking=accept-new). A changed key is always refused.",
    ),
]
ConnectTimeoutOpt = Annotated[
    Optional[float],
    typer.Option("--connect-timeout", help="Seconds to wait for a host to answer (default: ConnectTimeout from ssh_config, else 10).", min=0.5, metavar="SECONDS", show_default=False),
]

# -- hosts (work --hosts, hosts check) ------------------------------------------------------
RemoteImgqOpt = Annotated[
    str,
    typer.Option("--remote-imgq", help="The command that runs imgq on the hosts (a hosts-file line may give its own).", metavar="COMMAND"),
]
HostsOpt = Annotated[Optional[list[str]], typer.Option("--hosts", help="Work on these hosts over SSH: [user@]host[:port][/slots], comma-separated or repeated.", metavar="HOSTS", show_default=False)]
HostsFileOpt = Annotated[Optional[Path], typer.Option("--hosts-file", help="Work on the hosts listed in FILE, one per line with an optional remote imgq command; re-read while running (a new line joins, a removed one drains).", metavar="FILE", show_default=False)]
ListenOpt = Annotated[Optional[str], typer.Option("--listen", help="Admit agents that connect back (`imgq agent --connect`, started by a scheduler or a site script) on ADDR[:PORT]; `:0` (or an empty ADDR or PORT) means all addresses, a free port. They prove this run's secret over TLS; see --agent-file.", metavar="ADDR[:PORT]", show_default=False)]

# -- agents that connect back (work and run: --listen, --slurm) -----------------------------
AdvertiseOpt = Annotated[Optional[str], typer.Option("--advertise", help="The host name or address agents should dial (default: the listening address, or that of the interface of the default route).", metavar="HOST", show_default=False)]
AgentFileOpt = Annotated[Optional[Path], typer.Option("--agent-file", help="With --listen: write what agents need (address, secret, certificate fingerprint) to FILE, mode 0600, removed when the run ends; `imgq agent --secret-file FILE` reads it. Default: imgq-agent.env beside the database.", metavar="FILE", show_default=False, dir_okay=False)]
SlurmOpt = Annotated[Optional[int], typer.Option("--slurm", help="Start N agents as Slurm jobs, one srun each (cancelled when this run ends, even by SIGKILL); they connect back to this machine. Job options: [slurm] in imgq.toml, then --slurm-arg. Each agent's slots: the CPUs Slurm gave it.", min=1, metavar="N", show_default=False)]
SlurmArgOpt = Annotated[Optional[list[str]], typer.Option("--slurm-arg", help="With --slurm: one more srun/sbatch option for every agent's job, e.g. --slurm-arg=--qos=high (repeatable; after [slurm] in imgq.toml, so it wins).", metavar="ARG", show_default=False)]
SbatchOpt = Annotated[bool, typer.Option("--sbatch", help="With --slurm: submit the agents as one sbatch array job instead of srun children (scancelled when the run ends).")]


def settle_help(what: str) -> str:
    """The help of --settle, with the default from the settings."""
    return f"Skip files modified less than this many seconds ago{what}. Default {DEFAULTS.settle:g}, or `settle` in imgq.toml."


def remote_command(remote_imgq: str) -> tuple[str, ...]:
    """--remote-imgq split as a shell would."""
    try:
        command = tuple(shlex.split(remote_imgq))
    except ValueError as e:
        raise UsageError(f"--remote-imgq {remote_imgq!r}: {e}") from None
    if not command:
        raise UsageError("--remote-imgq cannot be empty")
    return command


def host_entries(hosts: list[str], hosts_file: Optional[Path], remote_imgq: str) -> list["HostEntry"]:
    """The hosts named on the command line and in the file (the first of a name wins)."""
    from imgq.fleet import hosts as hosts_lib  # only commands that use hosts load the fleet

    command = remote_command(remote_imgq)
    found = hosts_lib.parse_hosts(hosts_lib.split_hosts_option(hosts), remote_imgq=command)
    if hosts_file is not None:
        found += hosts_lib.read_hosts_file(hosts_file, remote_imgq=command)
    unique: dict[str, HostEntry] = {}
    for e in found:
        unique.setdefault(e.name, e)
    return list(unique.values())


def fleet_options(*, hosts: list[str], hosts_file: Optional[Path], remote_imgq: str, **kw) -> "coordinator.FleetOptions":
    """``imgq work``'s host options as the fleet's; the hosts file is read again while it runs."""
    if hosts_file is not None and not hosts_file.is_file():
        raise UsageError(f"--hosts-file {hosts_file}: no such file")
    shared_root = kw.get("shared_root")
    if shared_root is not None and not shared_root.is_dir():
        raise UsageError(f"--shared-root {shared_root}: no such folder")
    from imgq.fleet import coordinator  # the SSH stack loads only when hosts are used

    return coordinator.FleetOptions(hosts=host_entries(hosts, None, remote_imgq), hosts_file=hosts_file, remote_imgq=remote_command(remote_imgq), **kw)


def connect_back(*, listen: Optional[str], advertise: Optional[str], agent_file: Optional[Path], slurm: Optional[int],
                 slurm_arg: Optional[list[str]], sbatch: bool, settings, remote_imgq: str) -> dict:
    """--listen, --slurm N [--slurm-arg ARG]... [--sbatch], --advertise and --agent-file, as
    ``imgq work`` and ``imgq run`` take them, checked now: the ``FleetOptions`` keywords
    (``listen``, ``advertise``, ``agent_file``, ``launcher``). With --listen the agents'
    credentials go to ``imgq-agent.env`` beside the database unless --agent-file says where."""
    launcher = _slurm_launcher(slurm, slurm_arg or [], sbatch, settings, remote_imgq)
    if (advertise is not None or agent_file is not None) and listen is None and launcher is None:
        raise UsageError("--advertise and --agent-file go with --listen or --slurm")
    if listen is not None and agent_file is None:
        agent_file = Path(settings.db).parent / "imgq-agent.env"
    if agent_file is not None and not agent_file.parent.is_dir():
        raise UsageError(f"--agent-file {agent_file}: folder {agent_file.parent} does not exist")
    return {"listen": listen, "advertise": advertise, "agent_file": agent_file, "launcher": launcher}


def _slurm_launcher(agents: Optional[int], args: list[str], sbatch: bool, settings, remote_imgq: str):
    """--slurm N [--slurm-arg ARG]... [--sbatch] as the fleet's launcher, checked now."""
    if agents is None:
        if args or sbatch:
            raise UsageError(f"{'--slurm-arg' if args else '--sbatch'} goes with --slurm N")
        return None
    from imgq.fleet import slurm as slurm_lib  # only commands that use Slurm load it

    opts = slurm_lib.SlurmOptions(agents=agents, args=slurm_lib.check_args(args), sbatch=sbatch)
    slurm_lib.require_commands(sbatch)
    # the agents run the coordinator's own imgq (clusters share it), unless told otherwise
    imgq = remote_command(remote_imgq) if remote_imgq != "imgq" else None
    return slurm_lib.SlurmLauncher(opts, settings.slurm, imgq=imgq)
