"""Known problems of the Celery releases cloaca supports, said once at worker start-up.

cloaca allows every Celery release of its supported range (5.5 to 5.x): a
plugin must not forbid its host's current release over one failure mode.
Where a release has a problem that bites a cloaca deployment, the worker says
so in one WARNING line naming the problem and what to do, instead of cloaca
refusing to install beside it.

Each entry names the releases it was reproduced on, no wider: a later release
is only added after the broker-outage fault test
(``tests/faults/test_broker_outage.py``) shows the same exit on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UpstreamProblem:
    """A failure of a Celery release, the broker transports it affects and what to do about it."""

    releases: frozenset[tuple[int, int, int]]
    transports: frozenset[str]
    message: str


# Celery 5.7.0 closes the consumer's broker connection after collecting it (a fix for the
# reconnect hang of celery/celery#9705). On Redis the default channel is then closed a second
# time: it tries to restore its unacknowledged messages through a transport whose client
# collect() cleared, and kombu's _connparams raises AttributeError, which Celery does not
# treat as a connection error.
REDIS_RECONNECT_EXIT = UpstreamProblem(
    releases=frozenset({(5, 7, 0)}),
    transports=frozenset({"redis", "rediss", "sentinel"}),
    message=(
        "Celery {version}'s worker exits with \"Unrecoverable error: AttributeError(\"'NoneType' "
        "object has no attribute 'hostname'\")\" when its Redis broker connection drops while it "
        "holds unacknowledged messages (tasks prefetched behind a busy pool, eta/countdown tasks, "
        "running acks_late tasks); it does not reconnect. Run every worker under a supervisor "
        "that restarts it (systemd Restart=always; see cloaca's docs/deploying.md), or use "
        "Celery 5.6"
    ),
)

KNOWN_PROBLEMS: tuple[UpstreamProblem, ...] = (REDIS_RECONNECT_EXIT,)

_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def release_of(version: str) -> tuple[int, int, int] | None:
    """``(major, minor, micro)`` of a version string (``"5.7.0rc1"`` -> ``(5, 7, 0)``), or None."""
    match = _RELEASE.match(version.strip())
    if match is None:
        return None
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def transport_of(broker_url: str | Sequence[str] | None) -> str:
    """The kombu transport a broker URL selects: its scheme without a ``+driver`` suffix.

    A failover list (``"redis://a;redis://b"`` or a list of URLs) selects its
    first URL's transport. No URL means Celery's default, AMQP.
    """
    if broker_url is not None and not isinstance(broker_url, str):
        broker_url = next(iter(broker_url), None)
    first = (broker_url or "amqp://").split(";", 1)[0].strip()
    scheme = first.split("://", 1)[0] if "://" in first else first
    return scheme.split("+", 1)[0].lower()


def known_upstream_problems(celery_version: str, broker_transport: str = "redis") -> list[str]:
    """One message per known problem of ``celery_version`` with ``broker_transport``; usually none.

    Only releases a problem was reproduced on are named; pre-releases of such
    a release count as the release.
    """
    release = release_of(celery_version)
    transport = transport_of(broker_transport)
    return [
        problem.message.format(version=celery_version)
        for problem in KNOWN_PROBLEMS
        if release in problem.releases and transport in problem.transports
    ]


def upstream_problems_of(app: Any) -> list[str]:
    """The known problems of the Celery release installed here with the broker ``app``'s workers read."""
    import celery

    broker_url = app.conf.broker_read_url or app.conf.broker_url
    return known_upstream_problems(celery.__version__, transport_of(broker_url))
