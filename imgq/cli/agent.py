"""imgq agent (internal: started on a host by `imgq work --hosts`, or by a scheduler
with --connect to join `imgq work --listen`)"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq.errors import UsageError
from imgq.fleet import agent as agent_lib

EPILOG = """\b
Not for people: `imgq work --hosts` starts it on each host over SSH and talks to it in
frames on stdin/stdout (see imgq/protocol.py). Run by hand it waits for frames.
\b
With --connect it dials a coordinator started with `imgq work --listen` instead. The
secret and the certificate fingerprint come from --secret-file FILE (the coordinator's
--agent-file), else the environment (IMGQ_AGENT_SECRET, IMGQ_AGENT_FINGERPRINT), else
the first lines of stdin (NAME=VALUE); never from the command line, which `ps` shows.
  imgq agent --secret-file ~/run.env
  IMGQ_AGENT_NAME=job42 imgq agent --connect coord:7700 < run.env
"""


def agent(
    slots: Annotated[Optional[int], typer.Option("--slots", help="Worker processes (default: the host's cores; inside a Slurm job, the CPUs Slurm gave it).", min=1, metavar="N", show_default=False)] = None,
    workdir: Annotated[str, typer.Option("--workdir", help="Folder for session folders (one per agent, removed when it exits).", metavar="DIR")] = agent_lib.DEFAULT_WORKDIR,
    shared_root: Annotated[Optional[str], typer.Option("--shared-root", help="Read inputs sent as paths under this folder (hosts that see the coordinator's files).", metavar="PATH", show_default=False)] = None,
    shared_store: Annotated[Optional[str], typer.Option("--shared-store", help="The coordinator's store, seen here at the same path: write artifacts there (under per-attempt names) instead of sending them back, when the coordinator asks (`imgq work --shared-store`).", metavar="PATH", show_default=False)] = None,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", help="Exit after this many seconds without a message from the coordinator.", min=1.0, metavar="SECONDS")] = agent_lib.DEFAULT_IDLE_TIMEOUT,
    connect: Annotated[Optional[str], typer.Option("--connect", help="Dial the coordinator at HOST:PORT (`imgq work --listen`) instead of serving stdin/stdout (default with --secret-file: the address in it).", metavar="HOST:PORT", show_default=False)] = None,
    secret_file: Annotated[Optional[Path], typer.Option("--secret-file", help="Read the run's secret and certificate fingerprint (and address) from FILE: the coordinator's --agent-file.", metavar="FILE", show_default=False, dir_okay=False)] = None,
    fingerprint: Annotated[Optional[str], typer.Option("--fingerprint", help="The sha256 of the coordinator's certificate to pin (public; overrides the one read with the secret).", metavar="HEX", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="How the coordinator lists this agent (default: $IMGQ_AGENT_NAME, else tcp:HOSTNAME:PID).", metavar="NAME", show_default=False)] = None,
) -> None:
    """Serve one coordinator: render the jobs it sends, send back the artifacts."""
    if connect is None and secret_file is None:
        raise typer.Exit(agent_lib.main(slots=slots, workdir=workdir, shared_root=shared_root, idle_timeout=idle_timeout, shared_store=shared_store))
    from imgq.fleet import listen, slurm

    creds = _credentials(listen, secret_file, connect=connect, fingerprint=fingerprint)
    if not creds.connect:
        raise UsageError("no coordinator to dial: give --connect HOST:PORT (or IMGQ_AGENT_CONNECT in the secret file)")
    label = name or os.environ.get(listen.ENV_NAME) or slurm.agent_label() or f"tcp:{socket.gethostname()}:{os.getpid()}"
    raise typer.Exit(agent_lib.main_connect(creds, name=label, slots=slots, workdir=workdir, shared_root=shared_root, idle_timeout=idle_timeout, shared_store=shared_store))


def _credentials(listen, secret_file: Path | None, *, connect: str | None, fingerprint: str | None):
    """From --secret-file, else the environment, else stdin; the secret is then removed
    from the environment (the agent's slots and anything they start never see it)."""
    if secret_file is not None:
        try:
            text = secret_file.read_text()
        except OSError as e:
            raise UsageError(f"--secret-file {secret_file}: {e.strerror or e}") from None
        values, where = listen.parse_credentials(text, where=str(secret_file)), str(secret_file)
    elif os.environ.get(listen.ENV_SECRET):
        values = {k: os.environ[k] for k in (listen.ENV_SECRET, listen.ENV_FINGERPRINT, listen.ENV_CONNECT) if os.environ.get(k)}
        where = "the environment"
    else:
        if sys.stdin.isatty():
            sys.stderr.write(f"imgq agent: paste {listen.ENV_SECRET}=… and {listen.ENV_FINGERPRINT}=… lines (or use --secret-file)\n")
        values = listen.parse_credentials(listen.read_credential_lines(sys.stdin.buffer), where="stdin")
        where = "stdin"
    for k in (listen.ENV_SECRET, listen.ENV_FINGERPRINT):
        os.environ.pop(k, None)
    return listen.credentials(values, connect=connect, fingerprint=fingerprint, where=where)
