"""ANPR worker: sends citizen-registry changes to the ANPR web service.

Port of ``lib/itaPHPQueue/workers/itaQueueWorkerANPR.class.php``. The loader finds it by
convention (queue ``ANPR`` -> ``anpr.py`` -> class ``AnprWorker``); run it with::

    qengine work ANPR

Message data::

    {"citizen_id": "RSSMRA80A01H501U", "op": "update", "fields": {"address": "..."}}
    {"citizen_id": "RSSMRA80A01H501U", "op": "delete"}

This example does not call a real service: it appends the request it would send as one JSON
line to an "outbox" file, named by ``data["outbox"]`` or else by the ``QENGINE_ANPR_OUTBOX``
environment variable. Replace :meth:`AnprWorker.send` with the real call; keep the rest.

A message with the wrong shape can never succeed, so it raises ``Unrecoverable`` and goes
straight to the failed store; a failed write (the "service" is down) is retried with backoff.
"""

from __future__ import annotations

import json
import os
from typing import Any

from queue_engine import QueueMessage, Unrecoverable
from queue_engine.retry import ExponentialBackoff
from queue_engine.worker import Worker

OPS = ("update", "delete")
OUTBOX_ENV = "QENGINE_ANPR_OUTBOX"


class AnprWorker(Worker):
    """One ANPR request per message. Config ``[worker.ANPR]`` may override these defaults."""

    queue = "ANPR"
    retries = 5  # the service is often briefly unavailable
    backoff = ExponentialBackoff(base=30.0, factor=2.0, max_delay=3600.0, jitter=0.1)
    time_limit = 60.0  # a web-service call that hangs longer is treated as failed

    def process(self, message: QueueMessage) -> dict[str, Any]:
        request = self.validate(message.data)
        outbox = self.outbox(message.data)
        # The uuid travels with the request so the service can drop a duplicate delivery.
        request["request_id"] = message.uuid
        self.send(outbox, request)
        return request

    @staticmethod
    def validate(data: Any) -> dict[str, Any]:
        """The request to send, or Unrecoverable naming what is wrong with ``data``."""
        if not isinstance(data, dict):
            raise Unrecoverable(f"ANPR data must be an object, got {type(data).__name__}")
        citizen = data.get("citizen_id")
        if not isinstance(citizen, str) or not citizen.strip():
            raise Unrecoverable(f"ANPR data needs a non-empty string citizen_id, got {citizen!r}")
        op = data.get("op")
        if op not in OPS:
            raise Unrecoverable(f"ANPR op must be one of {', '.join(OPS)}, got {op!r}")
        fields = data.get("fields", {})
        if not isinstance(fields, dict):
            raise Unrecoverable(f"ANPR fields must be an object, got {type(fields).__name__}")
        if op == "update" and not fields:
            raise Unrecoverable("ANPR update needs at least one field in fields")
        return {"citizen_id": citizen.strip(), "op": op, "fields": fields}

    @staticmethod
    def outbox(data: dict[str, Any]) -> str:
        path = data.get("outbox") or os.environ.get(OUTBOX_ENV)
        if not isinstance(path, str) or not path:
            raise Unrecoverable(f"no outbox: set data['outbox'] or the {OUTBOX_ENV} environment variable")
        return path

    def send(self, outbox: str, request: dict[str, Any]) -> None:
        """Stand-in for the web-service call: one JSON line appended to ``outbox``.

        An OSError (missing folder, full disk) propagates, so the attempt is retried later.
        """
        line = json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n"
        with open(outbox, "a", encoding="utf-8") as fh:
            fh.write(line)
