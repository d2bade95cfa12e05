"""Known upstream problems: which Celery releases and brokers get the start-up warning."""

from __future__ import annotations

import pytest
from celery import Celery

from cloaca_celery.compat import known_upstream_problems, release_of, transport_of, upstream_problems_of


@pytest.mark.parametrize("transport", ["redis", "rediss", "sentinel", "redis://localhost:6379/0"])
def test_celery_5_7_0_on_redis_has_the_reconnect_exit(transport: str) -> None:
    problems = known_upstream_problems("5.7.0", transport)
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("Celery 5.7.0's worker exits")
    assert "'hostname'" in message and "unacknowledged" in message
    assert "Restart=always" in message and "docs/deploying.md" in message


def test_a_pre_release_of_5_7_0_counts_as_5_7_0() -> None:
    assert len(known_upstream_problems("5.7.0rc2", "redis")) == 1


@pytest.mark.parametrize("version", ["5.5.0", "5.5.3", "5.6.3", "5.7.1", "5.8.0", "6.0.0", "not a version"])
def test_other_releases_have_no_known_problem(version: str) -> None:
    assert known_upstream_problems(version, "redis") == []


@pytest.mark.parametrize("transport", ["amqp", "pyamqp", "filesystem", "memory", "sqs"])
def test_other_brokers_have_no_known_problem(transport: str) -> None:
    assert known_upstream_problems("5.7.0", transport) == []


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://localhost:6379/0", "redis"),
        ("rediss://:secret@cache:6380/1", "rediss"),
        ("redis+socket:///tmp/redis.sock", "redis"),
        ("sentinel://a:26379;sentinel://b:26379", "sentinel"),
        (["redis://a", "amqp://b"], "redis"),
        ("amqp://guest@localhost//", "amqp"),
        ("filesystem://", "filesystem"),
        (None, "amqp"),
    ],
)
def test_transport_of_a_broker_url(url: str | list[str] | None, transport: str) -> None:
    assert transport_of(url) == transport


def test_release_of() -> None:
    assert release_of("5.7.0") == (5, 7, 0)
    assert release_of("5.6.3.post1") == (5, 6, 3)
    assert release_of("5.7") is None


def test_an_app_is_judged_by_the_broker_its_workers_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import celery

    monkeypatch.setattr(celery, "__version__", "5.7.0")
    on_redis = Celery("compat-redis", broker="redis://localhost:6379/0", set_as_current=False)
    on_amqp = Celery("compat-amqp", broker="amqp://localhost//", set_as_current=False)
    read_redis = Celery("compat-read", broker="amqp://localhost//", set_as_current=False)
    read_redis.conf.broker_read_url = "redis://localhost:6379/0"
    assert len(upstream_problems_of(on_redis)) == 1
    assert upstream_problems_of(on_amqp) == []
    assert len(upstream_problems_of(read_redis)) == 1
