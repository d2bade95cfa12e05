"""``python -m benchmarks.run [--size tiny|full] [--runs N] [--out PATH]``

Runs every measurement ``--runs`` times (full: 3, tiny: 1), prints the table
and, for the full size (or with ``--out``), writes the page. Needs Redis and
PostgreSQL (see ``docs/performance.md``). Every process it starts is stopped,
and its Redis database and PostgreSQL schemas are emptied and dropped,
whatever happens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.measure import SIZES, Bench
from benchmarks.processes import REPO
from benchmarks.report import load_average, machine, page, table
from benchmarks.services import Services

DEFAULT_PAGE = REPO / "docs" / "performance.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (full: 3, tiny: 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="page to write (default: docs/performance.md for the full size, none for tiny)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's raw figures here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where process logs go (default: a temporary folder, removed after a good run)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    runs = args.runs if args.runs is not None else size.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    out = args.out if args.out is not None else (DEFAULT_PAGE if size.name == "full" else None)

    # A SIGTERM (a test timeout, a CI cancel) must still stop the worker and beat processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cloaca-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    load_before = load_average()
    source_before = source_state()
    results: list[dict[str, Any]] = []
    services = Services()
    ok = False
    try:
        redis_version, pg_version = services.server_versions()
        bench = Bench(services, size, workdir)
        for number in range(1, runs + 1):
            say(f"run {number}/{runs} (size {size.name}, Redis db {services.db})")
            results.append(bench.run_once(say))
        ok = True
    finally:
        services.close()
        if workdir.exists():
            (workdir / "schemas.txt").write_text("".join(f"{name}\n" for name in services.created))
        if ok and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            say(f"process logs kept in {workdir}")
    duration = time.monotonic() - clock
    machine_rows = [("cloaca-celery", describe_source(source_before, source_state())),
                    *machine(redis_version, pg_version, load_before, load_average())]
    print(table(results, size))
    print()
    for name, value in machine_rows:
        print(f"{name}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps({"size": size.name, "runs": results}, indent=1) + "\n")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page(results, size, machine_rows, started, duration))
        say(f"wrote {out}")
    return 0


def source_state() -> tuple[str, str]:
    """The commit measured, and a digest of uncommitted changes to the library ("" if none)."""
    import hashlib
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "cloaca_celery", "django_cloaca")
    return git("rev-parse", "--short", "HEAD") or "?", hashlib.sha1(diff.encode()).hexdigest() if diff else ""


def describe_source(before: tuple[str, str], after: tuple[str, str]) -> str:
    text = f"commit {before[0]}"
    if before[1]:
        text += " with uncommitted changes to the library"
    if after != before:
        text += " (the library changed during the run)"
    return text


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
