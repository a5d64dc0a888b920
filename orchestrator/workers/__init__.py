"""Worker entry points: ``orch worker`` runs a Celery worker with orch's app and configuration."""
