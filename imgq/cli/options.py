"""Options more than one command declares: destinations and how to reach ssh:// ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ToOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--to",
        help="A destination: a local folder or ssh://[user@]host[:port]/path (repeatable). Default: `destinations` in imgq.toml.",
        metavar="DEST",
        show_default=False,
    ),
]
SshConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--ssh-config", help="OpenSSH client config for ssh:// destinations (default: ~/.ssh/config).", metavar="FILE", show_default=False, dir_okay=False),
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option("--accept-new-host-keys", help="Trust and record the key of an ssh:// host seen for the first time (never a changed key)."),
]
