"""Function jobs for the ``orders`` queue (seed: ``q.enqueue(process_order, order_id)``).

This file defines no Worker class, so ``qengine work orders`` runs whatever function jobs the
``orders`` queue holds with the built-in function-job worker. A producer enqueues::

    from queue_engine import Queue
    from shop.orders import process_order   # wherever the function lives in your app

    Queue("orders").enqueue(process_order, 42)

The job stores ``"<module>:process_order"``, so the worker must be able to import the
function under the same module name as the producer did: keep job functions in a module of
your application's package, on the worker's ``sys.path`` too. (This example is importable as
``orders`` with the ``workers`` folder on ``sys.path``; the tests do exactly that.)

``process_order`` appends the processed order as a JSON line to the file named by the
``QENGINE_ORDERS_OUTBOX`` environment variable, when set, and returns it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from queue_engine import Unrecoverable

OUTBOX_ENV = "QENGINE_ORDERS_OUTBOX"


def process_order(order_id: int) -> dict[str, Any]:
    """Mark order ``order_id`` processed. A bad id is Unrecoverable: no retry can fix it."""
    if isinstance(order_id, bool) or not isinstance(order_id, int) or order_id < 1:
        raise Unrecoverable(f"order_id must be a whole number >= 1, got {order_id!r}")
    order = {"order_id": order_id, "status": "processed"}
    outbox = os.environ.get(OUTBOX_ENV)
    if outbox:
        with open(outbox, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(order) + "\n")
    return order
