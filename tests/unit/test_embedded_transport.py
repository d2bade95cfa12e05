"""The embedded broker's transport: messages appear in the queue folder whole."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from kombu import Connection

from cloaca_celery.embedded import TRANSPORT


def _connection(folder: Path) -> Connection:
    return Connection(
        "filesystem://localhost/", transport=TRANSPORT,
        transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder),
                           "control_folder": str(folder / "control")},
    )


BLOB = "x" * 4_000_000


def _produce(folder: Path, count: int) -> None:
    with _connection(folder) as conn:
        queue = conn.SimpleQueue("race")
        for i in range(count):
            queue.put({"blob": BLOB, "n": i})
        queue.close()


@pytest.mark.slow  # 60 messages of 4 MB: seconds of JSON
def test_a_consumer_racing_a_producer_never_reads_a_half_written_message(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    sent = 60
    received: list[dict[str, object]] = []
    errors: list[BaseException] = []
    producer = multiprocessing.get_context("fork").Process(target=_produce, args=(tmp_path, sent))
    producer.start()
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("race")
        while len(received) < sent:
            try:
                message = queue.get(timeout=10)
            except Exception as exc:  # noqa: BLE001 - any failure is the test's finding
                errors.append(exc)
                break
            received.append(message.payload)
            message.ack()
        queue.close()
    producer.join(timeout=60)
    assert not errors, errors
    assert sorted(m["n"] for m in received) == list(range(sent))  # type: ignore[type-var]
    assert all(m["blob"] == BLOB for m in received)
    assert not list(tmp_path.glob("partial-*"))
