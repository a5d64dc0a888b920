"""orch-agent: one per host, wraps the local container runtime behind an LXD-shaped HTTPS API."""
