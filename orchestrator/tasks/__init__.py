"""The steps of a copy/move job, one module per step, chained by :mod:`orchestrator.submit`:

verify_target → issue_token → pull_image → transfer_delta → delete_source (move only);
a move within one remote is the single step rename. rollback.py undoes a failed job.
"""
