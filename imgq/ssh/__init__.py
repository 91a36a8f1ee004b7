"""The SSH transport, through Fabric: the thin layer under the fleet and under
``ssh://`` archive destinations (so it sits below both, not inside the fleet).

Lives here: ``hostspec`` (``[user@]host[:port][/slots]`` and quoted remote command
lines), ``connect`` (connections opened as the user's OpenSSH would: ssh config, host
keys, timeouts; every failure a ``HostUnreachable`` saying what to do; SFTP sessions for
destinations) and ``process`` (one-shot commands, and the long-lived remote process the
agent runs in, whose stdin/stdout carry the frames of ``imgq.fleet.protocol``). It may
import ``imgq.errors`` only.
"""

from imgq.ssh.connect import (
    CHANNEL_WINDOW, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT, Connection, close, connect, describe, open_sftp,
)
from imgq.ssh.hostspec import HostSpec, parse_host_spec, remote_command
from imgq.ssh.process import RemoteProcess, RemoteResult, run, run_feeding, start_process

__all__ = [
    "CHANNEL_WINDOW", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_IO_TIMEOUT", "Connection", "HostSpec", "RemoteProcess",
    "RemoteResult", "close", "connect", "describe", "open_sftp", "parse_host_spec", "remote_command", "run", "run_feeding",
    "start_process",
]
