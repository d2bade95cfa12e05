"""The benchmark runs (tiny size, once) so that it cannot rot; its targets are not checked here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO
from tests.support.services import need_postgres, need_redis

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    need_redis()
    need_postgres()
    psutil = pytest.importorskip("psutil")
    from sqlalchemy import create_engine, text

    from benchmarks.measure import SIZES
    from benchmarks.report import rows
    from benchmarks.services import SCHEMA_PREFIX, postgres_url

    page = REPO / "docs" / "performance.md"
    page_before = page.read_bytes() if page.exists() else None
    out = tmp_path / "performance.md"
    workdir = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "BENCH_"))}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--size", "tiny", "--runs", "1",
         "--out", str(out), "--workdir", str(workdir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=320,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"

    # Every row is there, with numbers in the cloaca column.
    text_ = out.read_text()
    labels = [row.label for row in rows(SIZES["tiny"])]
    assert len(labels) >= 20
    for label in labels:
        lines = [line for line in text_.splitlines() if line.startswith(f"| {label} |")]
        assert lines, f"row {label!r} missing from the page:\n{text_}"
        cells = [c.strip() for c in lines[0].strip("|").split("|")]
        assert NUMBER.match(cells[1]), f"row {label!r}: cloaca value {cells[1]!r} is not a number"
        for value in cells[2:4]:
            assert value == "—" or NUMBER.match(value), f"row {label!r}: {value!r} is not a number"
    assert "| measurement | cloaca | bare Celery / baseline | ratio | target | met? |" in done.stdout
    assert "## Machine" in text_ and "PostgreSQL" in text_ and "make bench" in text_
    assert "```python" not in text_

    # The docs page was not touched; nothing is left behind.
    assert (page.read_bytes() if page.exists() else None) == page_before
    leftovers = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(str(workdir)):
            leftovers.append(proc.info["pid"])
    assert leftovers == [], f"benchmark processes still running: {leftovers}"
    engine = create_engine(postgres_url())
    try:
        with engine.connect() as conn:
            schemas = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": f"{SCHEMA_PREFIX}%"}
            ).scalars().all()
    finally:
        engine.dispose()
    # Other benchmark runs may be going on: only this run's schemas must be gone.
    ours = set(re.findall(rf"{SCHEMA_PREFIX}[0-9a-f]+", (workdir / "schemas.txt").read_text()))
    assert ours and not ours & set(schemas)
