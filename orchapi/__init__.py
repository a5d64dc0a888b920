"""The wire contract shared by `orch` and `orch-agent`.

Like LXD's ``shared/`` and ``client/`` split, this package holds what both sides must agree on:
name rules, certificates and TLS settings, API error types, and the REST client that the CLI (and, for
agent-to-agent transfers, the agents themselves) use to talk to an agent.
"""
