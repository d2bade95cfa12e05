"""``python -m benchmarks.profile [--mode skip|fire|noop] [--polls N] [--out DIR]``

Where one worker's time goes while it drains ``N`` tasks, with pyinstrument.
The worker runs the solo pool (tasks in its main thread, which pyinstrument
samples); ``skip`` and ``fire`` polls are published by the library's
dispatcher exactly as in the skip-poll throughput measurement, ``noop`` is the
bare-Celery side. Writes ``<mode>.txt`` (cloaca and Celery frames shown),
``<mode>.html`` and ``<mode>.pyisession`` to ``--out`` (default: a
``cloaca-bench-profile`` folder in the temporary directory).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.measure import LONG_INTERVAL, SIZES, Bench
from benchmarks.services import Services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("skip", "fire", "noop"), default="skip")
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cloaca-bench-profile")
    args = parser.parse_args(argv)
    n, mode = args.polls, args.mode
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    services = Services()
    try:
        bench = Bench(services, replace(SIZES["full"], flush_every=25), out)
        with services.schema() as (_schema, url):
            bench.prepare_store(url, n, LONG_INTERVAL, allow_concurrent=False)
            services.reset_redis()
            if mode == "noop":
                client = bench.client()
                with client.producer_or_acquire() as producer:
                    for _ in range(n):
                        client.send_task("bench.noop", producer=producer)
                client.close()
                key = "bench:done:bench.noop"
            else:
                sent, _writes, _rows, _all = bench.dispatch(url)
                if sent != n:
                    raise RuntimeError(f"the dispatcher sent {sent} polls, expected {n}")
                key = "bench:done:cloaca.complete" if mode == "fire" else "bench:done:cloaca.poll"
            session = out / f"{mode}.pyisession"
            procs = bench.processes(url, "fire" if mode == "fire" else "skip", n, LONG_INTERVAL)
            with procs:
                started = time.monotonic()
                procs.worker("profiled", concurrency=1, pool="solo",
                             wrap=["-m", "pyinstrument", "-r", "pyisession", "-o", str(session)])
                bench.wait(lambda: services.count(key) >= n, 120 + n, f"{n} tasks", procs)
                took = time.monotonic() - started
        shown = ["--show", "*/cloaca_celery/*", "--show", "*/celery/*", "--show", "*/kombu/*",
                 "--show", "*/sqlalchemy/*"]
        for renderer, suffix, extra in (("text", "txt", shown), ("html", "html", [])):
            subprocess.run(
                [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", renderer,
                 "-o", str(out / f"{mode}.{suffix}"), *extra],
                check=True,
            )
        print(f"{mode}: {n} tasks in {took:.1f}s (worker start included); {out / f'{mode}.txt'}")
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
