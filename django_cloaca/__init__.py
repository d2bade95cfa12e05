"""django_cloaca: the Django app of cloaca-celery.

``INSTALLED_APPS += ["django_cloaca"]`` and ``manage.py migrate`` give the
trigger schedules and execution history models, their admin, and a Django
ORM implementation of cloaca's ``Store`` that the engine uses when Celery
runs inside the project.
"""
