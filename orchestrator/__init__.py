"""orch: the operator's CLI and (from the copy/move work on) the Celery application that runs jobs."""
