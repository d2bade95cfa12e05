"""The Celery app that the benchmark's worker and beat processes run."""
