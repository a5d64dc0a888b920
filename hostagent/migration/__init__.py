"""Container migration between agents (LXD's "pull" mode).

The source agent issues one-shot tokens for a container (:mod:`tokens`,
``POST /1.0/containers/<name>/migration``); the target agent connects back to the source over HTTPS with
its own certificate and the token, and the two stream the volumes over one websocket (:mod:`protocol`,
:mod:`source`, :mod:`target`) with one of the transfer methods in :mod:`hostagent.transfer`; every volume
is verified against a manifest (:mod:`manifest`) before the target commits anything.
"""
