"""The example shop: a Django project whose Celery app runs cloaca triggers."""

from .celery import app as celery_app

__all__ = ["celery_app"]
