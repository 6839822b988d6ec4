"""ANPR daemon: every few seconds, sends what is waiting in the ANPR queue.

Port of ``/daemon/daemons/anprDaemon.class.php``. The methods keep the original's
camelCase names and meaning, so a PHP daemon ports line by line:

* ``executeStart``: one iteration, called again and again while the service runs;
* ``executeStop``: called once when the service stops;
* ``getSleepTime``: seconds of inactivity between two iterations.

Found by convention (daemon ``anpr`` -> ``anpr.py`` in ``[daemon] daemonsPath`` -> class
``AnprDaemon``). Run it::

    qengine daemon start anpr          # in the background; or `daemon run anpr` in the foreground
    qengine daemon status anpr
    qengine daemon stop anpr

Each iteration drains the ANPR queue with the ANPR worker (``workers/anpr.py``: retries,
backoff, failed store and audit trail all apply), at most ``BATCH`` messages, and stops
early when the service is stopping so a stop never waits for more than one message.
``[daemon.anpr] sleep = 2`` in config.ini overrides the pause between iterations.

On stop it closes the queue and, when the ``QENGINE_ANPR_REPORT`` environment variable names
a file, appends one JSON line to it: when it stopped, its pid and how many messages this run
sent (a stand-in for the original's "service stopped" notification).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from queue_engine import QueueFactory, QueueManager
from queue_engine.daemon import Daemon
from queue_engine.runner import WorkerRunner

QUEUE = "ANPR"
REPORT_ENV = "QENGINE_ANPR_REPORT"


class AnprDaemon(Daemon):
    """Drains the ANPR queue every ``sleep_time`` seconds."""

    #: Messages sent per iteration at most, so status and signals are looked at regularly.
    BATCH = 100
    sleep_time = 5.0
    queues = (QUEUE,)

    def __init__(self) -> None:
        self.manager: QueueManager | None = None
        self.runner: WorkerRunner | None = None
        self.sent = 0

    def executeStart(self) -> int:  # noqa: N802 - the original's name
        if self.runner is None:
            # Opened here, in the daemon process, not in __init__: a start that detaches
            # must not carry an open queue across the fork.
            self.manager = QueueFactory.get_queue_manager(self.config)
            self.runner = WorkerRunner(self.manager, [QUEUE], config=self.config)
        handled = 0
        while handled < self.BATCH and not self.stopping and self.runner.run_once():
            handled += 1
        self.sent += handled
        return handled  # counted as messages processed in `qengine daemon status`

    def executeStop(self) -> None:  # noqa: N802
        if self.manager is not None:
            self.manager.close()
            self.manager = self.runner = None
        report = os.environ.get(REPORT_ENV)
        if report:
            line: dict[str, Any] = {"stopped_at": time.time(), "pid": os.getpid(), "sent": self.sent}
            with open(report, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")

    def getSleepTime(self) -> float:  # noqa: N802
        return self.sleep_time
