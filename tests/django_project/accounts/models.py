"""A custom user model (``AUTH_USER_MODEL``), as many projects have: signed in by e-mail."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models


class OperatorManager(BaseUserManager["Operator"]):
    def create_user(self, email: str, password: str | None = None, **extra: Any) -> Operator:
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> Operator:
        return self.create_user(email, password, is_staff=True, is_superuser=True, **extra)


class Operator(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"

    objects = OperatorManager()

    class Meta:
        app_label = "accounts"
