"""Ratio benchmarks of cloaca-celery against bare Celery, run in the same session.

``make bench`` (``python -m benchmarks.run --size full``) starts real
``celery worker`` and ``celery beat`` processes against Redis and a
PostgreSQL store, measures every figure of issue #6 several times, prints the
table and writes it to ``docs/performance.md``. See :mod:`benchmarks.run`.
"""
