"""Workers on many hosts: the coordinator that claims for agents, the agent that runs on
each host, and what travels between them.

Lives here: ``coordinator`` (imgq work --hosts: the loop, its events, settling, stopping),
``options`` (what a run is asked and reports: FleetOptions, Launcher, FleetSummary),
``roster`` (the hosts: listed, connecting, up, benched, draining; hosts-file reloads),
``dispatch`` (claiming for agents, prefetch, sending inputs, receiving replies), ``local``
(local workers beside the hosts), ``agent`` (imgq agent), ``slot`` (what runs in one of
its slot processes), ``stages`` (a split video's chunks and join on an agent), ``link`` (one agent's
connection), ``protocol`` (the frames: their one definition), ``arrival`` (checking and
storing what an agent sends back), ``staging`` (a video's input streamed to an agent,
hashed as it goes; a join's parts), ``videos`` (the limits and checks of a video job's
reply: video artifacts, chunk parts), ``hosts`` (host lists, hosts files, preflight; reading
the hosts table), ``listen`` (agents that connect back: ``--listen``, their admission),
``join`` (the agent's side: ``agent --connect``, its credentials), ``tcp`` (addresses and
the TCP transport both use) and ``tls`` (the TLS stream, certificate and proof they use).
The SSH transport is ``imgq.ssh``, through Fabric. Host state is written
by ``imgq.ledger.hosts`` only.

It may import the ledger, imaging, split, recipes, store, errors and config, and ``imgq.work``
(an agent's slots run the local worker's ``process``; the coordinator settles through its
``settle``); never the CLI.

``FleetOptions``, ``FleetSummary`` and ``work`` are re-exported lazily: ``imgq status``
imports ``imgq.fleet.hosts`` and must not load the SSH stack.
"""


def __getattr__(name: str):
    if name in ("FleetOptions", "FleetSummary"):
        from imgq.fleet import options

        return getattr(options, name)
    if name == "work":
        from imgq.fleet import coordinator

        return coordinator.work
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
