"""The embedded default: broker, results and store in one local folder, no server.

The broker is kombu's ``filesystem://`` transport with two changes, both for
files that kombu creates first and writes after, so that another process can
read them empty in between:

* a message file is written under a temporary name and renamed into the
  queue folder, so a consumer never picks up a file that a producer is still
  writing (it would read an empty message and its loop would die);
* an exchange's table of bindings (in the control folder) is created whole
  before kombu adds a binding to it, so two processes declaring the same
  queue at once (a worker and beat starting together on a fresh folder)
  never read it empty.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps as kombu_dumps

logger = logging.getLogger("cloaca_celery.embedded")

TRANSPORT = "cloaca_celery.embedded:Transport"


class Channel(filesystem.Channel):  # type: ignore[misc]
    """A filesystem channel whose messages appear in the queue folder whole."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}.tmp")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(kombu_dumps(message)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _table_of(self, exchange: Any) -> Path:
        """The exchange's table file: kombu 5.6+ checks the name (``_exchange_file``), 5.5 does not."""
        checked = getattr(super(), "_exchange_file", None)
        if checked is not None:
            return Path(checked(exchange))
        return Path(self.control_folder) / f"{exchange}.exchange"

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        table = self._table_of(exchange)
        if not table.exists():
            self.control_folder.mkdir(parents=True, exist_ok=True)
            partial = table.with_name(f"partial-{uuid.uuid4().hex}.tmp")
            try:
                partial.write_bytes(b"[]")
                os.link(partial, table)  # never replaces a table another process made meanwhile
            except FileExistsError:
                pass
            except OSError as exc:
                raise ChannelError(f"Cannot create {table}") from exc
            finally:
                partial.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel


def apply_embedded_defaults(conf: Any, home: Path) -> None:
    """Broker in a folder (this module's transport), results in SQLite, under ``home``."""
    home = home.resolve()
    queue_dir = home / "broker" / "queue"
    control_dir = home / "broker" / "control"
    processed_dir = home / "broker" / "processed"
    for folder in (queue_dir, control_dir, processed_dir):
        folder.mkdir(parents=True, exist_ok=True)
    conf.broker_url = "filesystem://localhost/"
    conf.broker_transport = TRANSPORT
    options = dict(conf.broker_transport_options or {})
    options.setdefault("data_folder_in", str(queue_dir))
    options.setdefault("data_folder_out", str(queue_dir))
    options.setdefault("control_folder", str(control_dir))
    options.setdefault("processed_folder", str(processed_dir))
    options.setdefault("polling_interval", 0.02)
    conf.broker_transport_options = options
    if not conf.get("result_backend"):
        conf.result_backend = f"db+sqlite:///{home / 'results.db'}"
    if conf.get("beat_schedule_filename") in (None, "", "celerybeat-schedule"):
        conf.beat_schedule_filename = str(home / "celerybeat-schedule")
    logger.debug("cloaca: embedded default in %s", home)
