"""A trigger naming an unregistered workflow stops worker and beat start-up with one clear message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import CeleryProject

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_unknown_workflow_refuses_to_start(
    role: str, launch: Callable[..., CeleryProject], redis_url: str, tmp_path: Path
) -> None:
    project = launch(
        "e2e_orphan", E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}"
    )
    proc = project.worker() if role == "worker" else project.beat()
    code = proc.wait_exit(timeout=60)
    log = proc.log()
    assert code != 0, log
    assert "trigger 'orphan'" in log and "workflow 'no_such_workflow'" in log, log
    assert f"cloaca: {role} not started" in log, log
    assert "ready" not in log.split("cloaca:")[0] or role == "beat"
