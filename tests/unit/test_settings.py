"""resolve_settings and check_option_names: defaults, app.conf, kwargs, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

import cloaca_celery
from cloaca_celery import ConfigurationError
from cloaca_celery.settings import DEFAULTS, check_option_names, resolve_settings


@pytest.fixture(autouse=True)
def no_broker_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)


def make_app(**conf: object) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults() -> None:
    settings = resolve_settings(make_app().conf, {})
    assert settings.home == Path(".cloaca")
    assert settings.database_url == f"sqlite:///{(Path('.cloaca') / 'cloaca.db').resolve()}"
    assert settings.embedded is True
    assert settings.dispatch_interval is None
    assert settings.dispatch_batch_size == 5000
    assert settings.poll_time_limit == 30.0
    assert settings.poll_hard_time_limit > settings.poll_time_limit
    assert settings.poll_queue is None
    assert settings.dispatch_queue is None
    assert settings.max_context_bytes == 1024 * 1024


def test_database_url_defaults_to_sqlite_under_home(tmp_path: Path) -> None:
    settings = resolve_settings(make_app().conf, {"home": str(tmp_path / "state")})
    assert settings.home == tmp_path / "state"
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'cloaca.db'}"


def test_app_conf_cloaca_keys_are_read() -> None:
    app = make_app(
        cloaca_database_url="sqlite:///from_conf.db",
        cloaca_dispatch_batch_size=10,
        cloaca_poll_time_limit="2s",
        cloaca_dispatch_interval="200ms",
        cloaca_poll_queue="polls",
        cloaca_max_context_bytes=4096,
    )
    settings = resolve_settings(app.conf, {})
    assert settings.database_url == "sqlite:///from_conf.db"
    assert settings.dispatch_batch_size == 10
    assert settings.poll_time_limit == 2.0
    assert settings.dispatch_interval == pytest.approx(0.2)
    assert settings.poll_queue == "polls"
    assert settings.max_context_bytes == 4096


def test_keyword_options_override_app_conf() -> None:
    app = make_app(cloaca_database_url="sqlite:///from_conf.db", cloaca_dispatch_batch_size=10)
    settings = resolve_settings(
        app.conf, {"database_url": "sqlite:///from_kwargs.db", "dispatch_batch_size": 3}
    )
    assert settings.database_url == "sqlite:///from_kwargs.db"
    assert settings.dispatch_batch_size == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dispatch_batch_size", 0),
        ("dispatch_batch_size", -1),
        ("dispatch_batch_size", "ten"),
        ("dispatch_batch_size", "1.5"),
        ("heartbeat_misses", 1),
        ("heartbeat_misses", "one"),
        ("queued_timeout", "soon"),
        ("history_retention", -1),
        ("dispatch_batch_size", True),
        ("database_url", "nourl"),
        ("database_url", 42),
        ("embedded", "maybe"),
        ("embedded", 1),
        ("max_context_bytes", 0),
        ("poll_queue", 5),
        ("dispatch_queue", ["q"]),
    ],
)
def test_bad_values_raise_configuration_error_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"cloaca_{name}"):
        resolve_settings(make_app().conf, {name: value})


def test_bad_value_from_app_conf_names_the_setting() -> None:
    app = make_app(cloaca_dispatch_batch_size=0)
    with pytest.raises(ConfigurationError, match="cloaca_dispatch_batch_size"):
        resolve_settings(app.conf, {})


@pytest.mark.parametrize(("name", "value"), [("poll_time_limit", "nope"), ("poll_time_limit", 0)])
def test_bad_durations_raise_value_error_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"cloaca_{name}"):
        resolve_settings(make_app().conf, {name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("poll_time_limit", "nope"), ("poll_time_limit", -1), ("dispatch_interval", "soon")],
)
def test_bad_durations_raise_configuration_error(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"cloaca_{name}"):
        resolve_settings(make_app().conf, {name: value})


def test_embedded_auto_without_a_broker_is_true() -> None:
    assert resolve_settings(make_app().conf, {"embedded": "auto"}).embedded is True


def test_embedded_auto_with_a_broker_is_false() -> None:
    app = Celery("t", broker="redis://localhost:6379/0", set_as_current=False)
    assert resolve_settings(app.conf, {}).embedded is False
    assert resolve_settings(make_app(broker_url="memory://").conf, {"embedded": "auto"}).embedded is False


def test_embedded_auto_with_a_broker_in_the_environment_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    assert resolve_settings(make_app().conf, {}).embedded is False


@pytest.mark.parametrize("value", [True, False])
def test_embedded_explicit_bool_wins(value: bool) -> None:
    app = make_app(broker_url="memory://")
    assert resolve_settings(app.conf, {"embedded": value}).embedded is value


def test_check_option_names_accepts_every_known_option() -> None:
    check_option_names(dict(DEFAULTS))
    check_option_names({})


def test_check_option_names_rejects_unknown_names() -> None:
    with pytest.raises(ConfigurationError, match="databse_url"):
        check_option_names({"databse_url": "sqlite://x.db", "home": "."})


def test_install_rejects_unknown_option_names() -> None:
    with pytest.raises(ConfigurationError, match="bogus_option"):
        cloaca_celery.install(make_app(), bogus_option=1)


def test_liveness_settings_and_their_defaults() -> None:
    settings = resolve_settings(make_app().conf, {})
    assert (settings.heartbeat_interval, settings.heartbeat_misses, settings.lease) == (10.0, 3, 30.0)
    assert settings.queued_timeout == 6 * 3600 and settings.history_retention == 30 * 86400
    from_env = resolve_settings(make_app(cloaca_heartbeat_misses="4").conf, {"heartbeat_interval": "2s"})
    assert from_env.lease == 8.0


def test_history_retention_none_keeps_everything_from_kwargs_and_from_conf() -> None:
    assert resolve_settings(make_app().conf, {"history_retention": None}).history_retention is None
    assert resolve_settings(make_app(cloaca_history_retention=None).conf, {}).history_retention is None


def test_retired_settings_are_accepted_and_named() -> None:
    settings = resolve_settings(make_app(cloaca_claim_ttl="6h").conf, {"claim_grace": "10m"})
    assert settings.retired == ("claim_grace", "claim_ttl")
    check_option_names({"claim_grace": "10m"})  # install(app, claim_grace=...) still starts
