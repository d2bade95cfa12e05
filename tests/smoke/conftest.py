"""The e2e fixtures (``redis_url``, ``redis_client``, ``launch``) for the smoke test."""

from __future__ import annotations

from tests.e2e.conftest import launch, redis_client, redis_url

__all__ = ["launch", "redis_client", "redis_url"]
