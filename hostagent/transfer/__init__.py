"""Transfer methods: how a container's volumes get from the source agent to the target agent.

``base.py`` holds the interface (each method's facts and hooks) and the process plumbing; ``sides.py``
what the migration sessions offer a method; ``registry.py`` is the only module naming the
implementations, and derives the preference and the negotiation from their facts. The implementations:
``rsync.py`` (the real rsync binary speaking its own protocol through the websocket, with the target
pre-filled so that only the difference travels), ``btrfs.py`` (``btrfs send``/``receive``, incremental
between snapshots), ``tar.py`` (a plain stream, extracted without ever following a symlink) and
``lxd_migration.py`` (LXD moving the data itself, verified by orch afterwards).
"""
