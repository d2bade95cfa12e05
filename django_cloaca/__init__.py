"""django_cloaca: the optional Django app of cloaca-celery (models, admin, ORM store)."""
