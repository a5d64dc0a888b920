"""How a job's data gets from the source agent to the target: the transfer modes.

- ``pull`` (:mod:`.pull`): the target dials the source (LXD's default);
- ``push`` (:mod:`.push`): the source dials a sink the target opened, for a target the source can reach
  but not the other way round;
- ``relay`` (:mod:`.relay`): the worker dials both and carries the frames, for agents that cannot reach
  each other either way.

``auto`` (the default) tries them in that order and moves on only when the agents could not connect
(:class:`~orchapi.errors.PeerUnreachable`: no route, refused, no answer), never after a protocol,
verification or policy error, which a change of direction would not mend. The mode in use is recorded
on the job (``JobState.mode``) and shown by ``orch jobs show``. Whatever the mode, the target receives,
checks and verifies the same way, and the worker follows every agent's operation, cancelling the other
if one fails (a push watched on one side only could hang).
"""

from __future__ import annotations

MODES = ("pull", "push", "relay")
#: what ``--mode`` takes
WISHES = ("auto", *MODES)
