"""imgq agent (internal: started on a host by `imgq work --hosts`)"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from imgq.fleet import agent as agent_lib

EPILOG = """\b
Not for people: `imgq work --hosts` starts it on each host over SSH and talks to it in
frames on stdin/stdout (see imgq/protocol.py). Run by hand it waits for frames.
"""


def agent(
    slots: Annotated[Optional[int], typer.Option("--slots", help="Worker processes (default: the host's cores; inside a Slurm job, the CPUs Slurm gave it).", min=1, metavar="N", show_default=False)] = None,
    workdir: Annotated[str, typer.Option("--workdir", help="Folder for session folders (one per agent, removed when it exits).", metavar="DIR")] = agent_lib.DEFAULT_WORKDIR,
    shared_root: Annotated[Optional[str], typer.Option("--shared-root", help="Read inputs sent as paths under this folder (hosts that see the coordinator's files).", metavar="PATH", show_default=False)] = None,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", help="Exit after this many seconds without a message from the coordinator.", min=1.0, metavar="SECONDS")] = agent_lib.DEFAULT_IDLE_TIMEOUT,
) -> None:
    """Serve one coordinator: render the jobs it sends, send back the artifacts."""
    raise typer.Exit(agent_lib.main(slots=slots, workdir=workdir, shared_root=shared_root, idle_timeout=idle_timeout))
