"""Catalog inbox daemon: copies seed-002 catalog messages from RabbitMQ into the CATALOG queue.

The daemon form of ``qengine amqp consume``. Found by convention (daemon ``catalog_inbox``
-> ``catalog_inbox.py`` in ``[daemon] daemonsPath`` -> class ``CatalogInboxDaemon``)::

    qengine daemon start catalog_inbox     # copies RabbitMQ -> CATALOG
    qengine daemon start catalog           # a WorkerDaemon applying CATALOG (workers/catalog.py)
    qengine daemon status catalog_inbox

The RabbitMQ queue is the seed's ``rabbitMQ.endpointName``: ``catalog`` unless the
``QENGINE_CATALOG_SOURCE`` environment variable names another. The connection and the
prefetch come from ``[amqp]`` in config.ini (``uri``, or ``host`` / ``port`` / ``username`` /
``password`` / ``virtualHost``, never both). Each delivery is acked only once it is stored in
CATALOG; a body that is not JSON is kept in CATALOG's failed store with its raw bytes.
Stopping the daemon (the seed's ``rabbitMQ.enabled = false``) closes the connection, and
RabbitMQ keeps whatever arrives meanwhile.
"""

from __future__ import annotations

import os

from queue_engine.amqp import AmqpConsumerDaemon

SOURCE_ENV = "QENGINE_CATALOG_SOURCE"


class CatalogInboxDaemon(AmqpConsumerDaemon):
    """RabbitMQ queue ``catalog`` (or ``$QENGINE_CATALOG_SOURCE``) -> qengine queue ``CATALOG``."""

    source = os.environ.get(SOURCE_ENV, "catalog")
    into = "CATALOG"
