"""Transfer methods: how one volume's content crosses the migration websocket.

``base.py`` holds the interface, the negotiation and the process plumbing; ``rsync.py`` (the real rsync
binary speaking its own protocol through the websocket, with the target pre-filled so that only the
difference travels), ``btrfs.py`` (``btrfs send``/``receive``, incremental between snapshots) and
``tar.py`` (a plain stream, extracted without ever following a symlink) are the implementations.
"""
