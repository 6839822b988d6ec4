"""Catalog worker: applies the catalog messages of seed 002 (Promo) to a local SQLite store.

Another component copies the RabbitMQ catalog messages into the qengine queue ``CATALOG``.
The loader finds this worker by convention (queue ``CATALOG`` -> ``catalog.py`` -> class
``CatalogWorker``); run it with::

    QENGINE_CATALOG_DB=/var/lib/app/catalog.sqlite3 qengine work CATALOG

Message data (seed 002)::

    {"companyId": "napse", "catalog": "catalogEventTransactionType", "params": [],
     "items": [{"operation": "I", "code": "bf2019", "name": "Black Friday 2019"}]}

* ``companyId``: a non-empty string.
* ``catalog``: one of the seed's types (:data:`CATALOGS`: ``catalogCard``, ``catalogBrand``,
  ... ``catalogZone``; exact spelling, case included) or a declared dynamic catalog, below.
* ``params``: optional, a list or an object (or null); not used by this store.
* ``items``: a non-empty list of objects. Each has ``operation`` and ``code``; every other key
  is a field of the catalog entry. The item key is ``code``, as in the seed's examples: a
  non-empty string (kept exactly, no trimming) or a whole number (stored as its decimal text,
  so ``7`` and ``"7"`` are the same entry).

Operations, per item, in the order given:

* ``I`` inserts; the code must not exist yet.
* ``U`` updates; the code must exist. The entry's fields are *replaced* by the item's (the
  seed sends whole records), not merged.
* ``D`` deletes; the code must exist. Other keys of the item are ignored.
* ``IU`` inserts, or replaces the fields of an existing entry.

Dynamic catalogs (seed: ``catalog<CodeFieldDynamic>``, named after a field created in the
console) must be declared, so that a typo such as ``catalogBrnad`` is still refused: list their
full names in :attr:`CatalogWorker.dynamic_catalogs` (a subclass) or in the
``QENGINE_CATALOG_DYNAMIC`` environment variable (separated by commas or spaces), e.g.
``QENGINE_CATALOG_DYNAMIC=catalogColor,catalogSeason``. A declared name must be ``catalog``
followed by letters, digits or ``_``.

The store (:class:`CatalogStore`) is the SQLite file named by ``QENGINE_CATALOG_DB``: table
``catalog_items`` keyed by (company_id, catalog, code), holding the item's fields as JSON
(``operation`` left out, ``code`` kept), ``updated_at`` (ISO 8601, UTC) and the uuid of the
qengine message that last wrote it. The file is in WAL mode (readers and the worker do not block
each other), so its folder must be writable: SQLite keeps ``-wal`` and ``-shm`` files beside it.
Replace :class:`CatalogStore` to write elsewhere; keep the contract of :meth:`CatalogStore.apply`.

Failures:

* A message is applied all or nothing, in one SQLite transaction.
* Bad data (wrong shape, unknown catalog or operation, missing code) raises ``Unrecoverable``
  naming the item (``items[2]``), its operation and code: retrying cannot help, the message
  goes straight to the failed store and nothing of it is applied.
* A conflict with the store (``I`` of an existing code, ``U`` or ``D`` of a missing one)
  raises :class:`CatalogConflict`, an ``Unrecoverable``: retrying the same message would
  conflict again. Fix the data or the store, then ``qengine requeue CATALOG``.
* A missing ``QENGINE_CATALOG_DB`` is ``Unrecoverable`` too (as for the ANPR outbox).
* SQLite errors (``database is locked`` after the busy timeout, a folder that does not exist)
  propagate and the attempt is retried with backoff.

Delivery is at least once (a worker killed after the commit but before the ack processes the
message again), so the store records the uuid of every applied message in
``applied_messages`` in the same transaction; a message already applied is not applied again
and returns its first summary with ``"redelivery": true``. A message without a uuid (built by
hand, not read from a queue) is applied without that record. The check is per qengine uuid: a
RabbitMQ redelivery copied in as a new qengine message has a new uuid, so the copier must drop
those itself (e.g. alias = the AMQP message id). ``applied_messages`` only grows; rows older
than any possible redelivery may be deleted.

:meth:`CatalogWorker.process` returns a summary, passed to ``on_success`` and recorded in the
audit trail (``AuditRecord.extra`` of the successful attempt)::

    {"companyId": "napse", "catalog": "catalogBrand", "items": 3,
     "inserted": 2, "updated": 1, "deleted": 0, "redelivery": false}
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from queue_engine import QueueMessage, Unrecoverable
from queue_engine.retry import ExponentialBackoff
from queue_engine.worker import Worker

DB_ENV = "QENGINE_CATALOG_DB"
DYNAMIC_ENV = "QENGINE_CATALOG_DYNAMIC"

#: Catalog types listed by seed 002 ("TIPOS VALIDOS DE CATÁLOGOS"), dynamic ones aside.
CATALOGS = frozenset(
    {
        "catalogCard",
        "catalogBrand",
        "catalogCategory",
        "catalogChannel",
        "catalogCreditCampaignCode",
        "catalogCustomer",
        "catalogCustomerType",
        "catalogIdType",
        "catalogDepartment",
        "catalogEventTransaction",
        "catalogEventTransactionType",
        "catalogExtendWarranty",
        "catalogFamily",
        "catalogFormat",
        "catalogInfoFinancial",
        "catalogItem",
        "catalogItemStock",
        "catalogPaymentBank",
        "catalogPaymentCode",
        "catalogPaymentPrefix",
        "catalogPaymentType",
        "catalogProfileCode",
        "catalogStoreChain",
        "catalogStore",
        "catalogSubCategory",
        "catalogSubZone",
        "catalogSupplier",
        "catalogZone",
    }
)
#: Valid ``operation`` values: insert, update, delete, insert-or-update.
OPERATIONS = ("I", "U", "D", "IU")
_DYNAMIC_NAME = re.compile(r"catalog\w+", re.ASCII)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_items (
    company_id   TEXT NOT NULL,
    catalog      TEXT NOT NULL,
    code         TEXT NOT NULL,
    fields       TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    message_uuid TEXT,
    PRIMARY KEY (company_id, catalog, code)
);
CREATE TABLE IF NOT EXISTS applied_messages (
    uuid       TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL,
    summary    TEXT NOT NULL
);
"""


class CatalogConflict(Unrecoverable):
    """An item conflicts with the store: I of an existing code, U or D of a missing one."""


@dataclass(frozen=True)
class Operation:
    """One validated item: its position in ``items``, operation, code and fields to store."""

    index: int
    operation: str
    code: str
    fields: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        return f"items[{self.index}] (operation {self.operation!r}, code {self.code!r})"


class CatalogStore:
    """The local catalog: a SQLite file, opened with a busy timeout. Use as a context manager.

    ``timeout`` is how long a write waits for another writer's lock before SQLite raises
    ``OperationalError: database is locked``. Opening creates the tables when missing.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        # isolation_level=None: no implicit transactions; apply() issues BEGIN/COMMIT itself.
        self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            # WAL: readers of the catalog do not block the worker's writes, nor it theirs.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CatalogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(self, uuid: str | None, company: str, catalog: str, operations: Sequence[Operation]) -> dict[str, Any]:
        """Apply ``operations`` in order, in ONE transaction; return the counts.

        Returns ``{"inserted", "updated", "deleted", "redelivery"}``. When ``uuid`` was
        applied before, nothing changes and the first counts come back with
        ``redelivery`` true. Raises :class:`CatalogConflict` (nothing applied) for I of an
        existing code or U/D of a missing one; ``sqlite3.Error`` as raised (nothing applied).
        """
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        # IMMEDIATE takes the write lock now: two workers holding the same redelivered uuid
        # cannot both pass the applied_messages check below.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if uuid is not None:
                row = self.conn.execute("SELECT summary FROM applied_messages WHERE uuid = ?", (uuid,)).fetchone()
                if row is not None:
                    self.conn.execute("ROLLBACK")
                    return {**json.loads(row[0]), "redelivery": True}
            counts = {"inserted": 0, "updated": 0, "deleted": 0}
            for op in operations:
                counts[self._apply_one(uuid, company, catalog, op, now)] += 1
            if uuid is not None:
                self.conn.execute(
                    "INSERT INTO applied_messages (uuid, applied_at, summary) VALUES (?, ?, ?)",
                    (uuid, now, json.dumps(counts)),
                )
            self.conn.execute("COMMIT")
        except BaseException:
            # Any failure, a time limit included, leaves the store as it was.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return {**counts, "redelivery": False}

    def _apply_one(self, uuid: str | None, company: str, catalog: str, op: Operation, now: str) -> str:
        key = (company, catalog, op.code)
        exists = (
            self.conn.execute(
                "SELECT 1 FROM catalog_items WHERE company_id = ? AND catalog = ? AND code = ?", key
            ).fetchone()
            is not None
        )
        place = f"{catalog} of company {company!r}"
        if op.operation == "D":
            if not exists:
                raise CatalogConflict(f"{op.where()}: not in {place}, nothing to delete")
            self.conn.execute("DELETE FROM catalog_items WHERE company_id = ? AND catalog = ? AND code = ?", key)
            return "deleted"
        if op.operation == "I" and exists:
            raise CatalogConflict(f"{op.where()}: already in {place}; use U or IU to change it")
        if op.operation == "U" and not exists:
            raise CatalogConflict(f"{op.where()}: not in {place}; use I or IU to add it")
        fields = json.dumps(op.fields, ensure_ascii=False, separators=(",", ":"))
        self.conn.execute(
            "INSERT INTO catalog_items (company_id, catalog, code, fields, updated_at, message_uuid)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (company_id, catalog, code) DO UPDATE SET"
            " fields = excluded.fields, updated_at = excluded.updated_at, message_uuid = excluded.message_uuid",
            (*key, fields, now, uuid),
        )
        return "updated" if exists else "inserted"

    def get(self, company: str, catalog: str, code: str | int) -> dict[str, Any] | None:
        """The stored fields of one entry, or None."""
        row = self.conn.execute(
            "SELECT fields FROM catalog_items WHERE company_id = ? AND catalog = ? AND code = ?",
            (company, catalog, str(code)),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def entry(self, company: str, catalog: str, code: str | int) -> dict[str, Any] | None:
        """One entry with its bookkeeping: ``fields``, ``updated_at``, ``message_uuid``; or None."""
        row = self.conn.execute(
            "SELECT fields, updated_at, message_uuid FROM catalog_items"
            " WHERE company_id = ? AND catalog = ? AND code = ?",
            (company, catalog, str(code)),
        ).fetchone()
        if row is None:
            return None
        return {"fields": json.loads(row[0]), "updated_at": row[1], "message_uuid": row[2]}

    def count(self, company: str | None = None, catalog: str | None = None) -> int:
        """Number of entries, of one company and/or one catalog when given."""
        sql = "SELECT COUNT(*) FROM catalog_items WHERE (? IS NULL OR company_id = ?) AND (? IS NULL OR catalog = ?)"
        return int(self.conn.execute(sql, (company, company, catalog, catalog)).fetchone()[0])


class CatalogWorker(Worker):
    """One catalog message, applied all or nothing. Config ``[worker.CATALOG]`` may override these."""

    queue = "CATALOG"
    retries = 5  # only SQLite errors (a locked or unreachable database) are retried
    backoff = ExponentialBackoff(base=5.0, factor=2.0, max_delay=300.0, jitter=0.1)
    time_limit = 300.0  # a large catalog (thousands of customers) is still one transaction
    #: Seconds a write waits for another writer before "database is locked" (then a retry).
    busy_timeout = 30.0
    #: Declared dynamic catalogs (``catalog<CodeFieldDynamic>``), besides those in QENGINE_CATALOG_DYNAMIC.
    dynamic_catalogs: tuple[str, ...] = ()

    def process(self, message: QueueMessage) -> dict[str, Any]:
        company, catalog, operations = self.validate(message.data, self.allowed_dynamic())
        with self.open_store() as store:
            counts = store.apply(message.uuid, company, catalog, operations)
        return {"companyId": company, "catalog": catalog, "items": len(operations), **counts}

    def audit_extra(self, message: QueueMessage, outcome: str, result_or_error: Any) -> dict[str, Any]:
        """A successful attempt's audit record gets the summary (catalog, counts, redelivery)."""
        return dict(result_or_error) if outcome == "success" and isinstance(result_or_error, dict) else {}

    def open_store(self) -> CatalogStore:
        """The store named by QENGINE_CATALOG_DB; Unrecoverable when the variable is not set."""
        path = os.environ.get(DB_ENV)
        if not path:
            raise Unrecoverable(f"no catalog database: set the {DB_ENV} environment variable to a SQLite file path")
        return CatalogStore(path, timeout=self.busy_timeout)

    def allowed_dynamic(self) -> frozenset[str]:
        """Declared dynamic catalogs; Unrecoverable naming a declared name that is not ``catalog<X>``."""
        declared = list(self.dynamic_catalogs) + os.environ.get(DYNAMIC_ENV, "").replace(",", " ").split()
        for name in declared:
            if not _DYNAMIC_NAME.fullmatch(name):
                raise Unrecoverable(
                    f"dynamic catalog {name!r} (from {DYNAMIC_ENV} or dynamic_catalogs) must be 'catalog' "
                    "followed by letters, digits or _"
                )
        return frozenset(declared)

    @staticmethod
    def validate(data: Any, dynamic: Iterable[str] = ()) -> tuple[str, str, list[Operation]]:
        """(companyId, catalog, operations), or Unrecoverable naming what is wrong with ``data``."""
        if not isinstance(data, dict):
            raise Unrecoverable(f"catalog message data must be an object, got {type(data).__name__}")
        company = data.get("companyId")
        if not isinstance(company, str) or not company.strip():
            raise Unrecoverable(f"catalog message needs a non-empty string companyId, got {company!r}")
        catalog = check_catalog(data.get("catalog"), frozenset(dynamic))
        params = data.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            raise Unrecoverable(f"params must be a list or an object when given, got {params!r}")
        items = data.get("items")
        if not isinstance(items, list):
            raise Unrecoverable(f"items must be a non-empty list of objects, got {type(items).__name__}")
        if not items:
            raise Unrecoverable(f"items is empty: nothing to apply to {catalog} of company {company!r}")
        return company, catalog, [check_item(index, item) for index, item in enumerate(items)]


def check_catalog(name: Any, dynamic: frozenset[str]) -> str:
    """``name`` when it is a seed type or a declared dynamic catalog; else Unrecoverable."""
    if not isinstance(name, str) or not name:
        raise Unrecoverable(f"catalog message needs a non-empty string catalog, got {name!r}")
    if name in CATALOGS or name in dynamic:
        return name
    close = difflib.get_close_matches(name, [*CATALOGS, *dynamic], n=1, cutoff=0.85)  # typos, not guesses
    hint = f" (did you mean {close[0]}?)" if close else ""
    declared = ", ".join(sorted(dynamic)) or "none"
    raise Unrecoverable(
        f"unknown catalog {name!r}{hint}: not one of the {len(CATALOGS)} seed types (catalogBrand, "
        f"catalogCard, ... catalogZone) nor a dynamic catalog declared in {DYNAMIC_ENV} (declared: {declared})"
    )


def check_item(index: int, item: Any) -> Operation:
    """Item ``index`` of ``items`` as an :class:`Operation`; Unrecoverable naming what is wrong."""
    if not isinstance(item, dict):
        raise Unrecoverable(f"items[{index}] must be an object, got {type(item).__name__}")
    operation = item.get("operation")
    code = item.get("code")
    if operation not in OPERATIONS:
        raise Unrecoverable(
            f"items[{index}] (code {code!r}): unknown operation {operation!r}; valid: {', '.join(OPERATIONS)}"
        )
    if isinstance(code, int) and not isinstance(code, bool):
        text = str(code)
    elif isinstance(code, str) and code.strip():
        text = code
    else:
        raise Unrecoverable(
            f"items[{index}] (operation {operation!r}): code must be a non-empty string or a whole number, "
            f"got {code!r}"
        )
    fields = {k: v for k, v in item.items() if k != "operation"}
    return Operation(index, operation, text, fields)
