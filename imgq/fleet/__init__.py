"""Workers on many hosts: the coordinator that claims for agents, the agent that runs on
each host, and what travels between them.

Lives here: ``coordinator`` (imgq work --hosts), ``agent`` (imgq agent), ``link`` (one
agent's connection), ``protocol`` (the frames), ``arrival`` (checking and storing what an
agent sends back), ``hosts`` (host lists, hosts files, preflight, the hosts table) and
``ssh`` (the SSH transport, through Fabric). It may import the ledger, imaging, recipes,
store, errors and config, and ``imgq.work`` (an agent's slots run the local worker's
``process``); never the CLI.
"""
