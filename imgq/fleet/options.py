"""What a fleet run is asked to do and what it reports: ``FleetOptions`` (hosts, slots,
prefetch, transports, listening for connect-back agents), ``Launcher`` (what starts agents
that connect back, such as Slurm) and ``FleetSummary``. Apart from the coordinator's loop
(``imgq.fleet.coordinator``), so the CLI and ``imgq run`` build options without it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from imgq.fleet.hosts import HostEntry
from imgq.work import WorkSummary


@dataclasses.dataclass
class FleetOptions:
    hosts: list[HostEntry] = dataclasses.field(default_factory=list)
    hosts_file: Path | None = None
    remote_imgq: tuple[str, ...] = ("imgq",)
    slots: int | None = None  # per host without /slots; None: the host's cores
    prefetch: int | None = None  # jobs in flight per host beyond its slots; None: its slots, more for jobs of milliseconds (Dispatch.prefetch)
    transfers: int = 2  # inputs read and sent at once, per host
    shared_root: Path | None = None
    shared_store: bool = False  # the hosts see the store at the same path: agents write artifacts there themselves
    ssh_config: Path | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None
    host_timeout: float = 5.0  # silence after which a host is lost
    local_processes: int = 0  # local worker processes beside the hosts
    mode: str = "drain"  # drain | once | follow
    max_attempts: int | None = None
    poll: float = 1.0
    listen: str | None = None  # ADDR[:PORT] ("" all addresses, a free port): admit connect-back agents
    advertise: str | None = None  # the address agents dial (default: derived, see listen.Listener)
    agent_file: Path | None = None  # where the agents' credentials are written for site scripts (0600)
    launcher: "Launcher | None" = None  # starts agents that connect back (Slurm); implies listen


class Launcher:
    """Something that starts agents which connect back to this run (``--slurm``; a site's
    own scheduler): ``start`` once the listener is up (``listener.agent_argv()`` and
    ``listener.agent_env()`` or ``credentials()`` are what an agent needs), ``tick``
    every loop of the coordinator (return report tuples to pass on), ``stop`` when the
    run ends (cancel what is left; agents also exit when their connection closes), then
    ``tick`` once more (how the agents ended). A report ``("slurm", name, job id, state,
    why)`` about an agent not in the roster (yet) becomes its row in the hosts table."""

    def start(self, listener) -> None:
        raise NotImplementedError

    def tick(self) -> list[tuple]:
        return []

    def stop(self) -> None:
        pass


@dataclasses.dataclass
class FleetSummary(WorkSummary):
    bytes_out: int = 0  # sent to agents: inputs, job headers, pings
    bytes_in: int = 0  # received: artifacts, replies, heartbeats
    hosts: dict = dataclasses.field(default_factory=dict)  # name -> state at the end
