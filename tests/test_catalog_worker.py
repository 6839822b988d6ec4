"""The example catalog worker (``workers/catalog.py``, seed 002) on a real SQLite file.

The worker file is loaded by path with :func:`~queue_engine.loader.load_worker_file`, the
same module object the loader gives ``qengine work CATALOG``. Unit tests call ``process``
directly; the end-to-end tests drain a real file-backend queue with ``WorkerRunner`` and
once with a real ``qengine work`` process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import types
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queue_engine import QueueFactory, QueueManager, QueueMessage, Unrecoverable, load_config
from queue_engine.audit import get_audit_log
from queue_engine.loader import load_worker_file
from queue_engine.runner import WorkerRunner

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD = 120.0
COMPANY = "napse"


@pytest.fixture(scope="module")
def mod() -> types.ModuleType:
    return load_worker_file(REPO / "workers" / "catalog.py")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "catalog.sqlite3"
    monkeypatch.setenv("QENGINE_CATALOG_DB", str(path))
    monkeypatch.delenv("QENGINE_CATALOG_DYNAMIC", raising=False)
    return path


@pytest.fixture
def worker(mod: types.ModuleType, db: Path) -> Any:
    return mod.CatalogWorker()


@pytest.fixture
def store(mod: types.ModuleType, db: Path) -> Iterator[Any]:
    with mod.CatalogStore(db) as opened:
        yield opened


def message(*items: dict[str, Any], catalog: str = "catalogBrand", uuid: str | None = "new") -> QueueMessage:
    data = {"companyId": COMPANY, "catalog": catalog, "params": [], "items": list(items)}
    return QueueMessage(data=data, uuid=str(uuidlib.uuid4()) if uuid == "new" else uuid)


def counts(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["inserted"], result["updated"], result["deleted"]


# -- operations -----------------------------------------------------------------------------
def test_insert_stores_fields_and_bookkeeping(worker: Any, store: Any) -> None:
    msg = message({"operation": "I", "code": "sony", "name": "Sony"}, {"operation": "I", "code": "lg", "name": "LG"})
    assert worker.process(msg) == {
        "companyId": COMPANY, "catalog": "catalogBrand", "items": 2,
        "inserted": 2, "updated": 0, "deleted": 0, "redelivery": False,
    }
    assert store.get(COMPANY, "catalogBrand", "sony") == {"code": "sony", "name": "Sony"}
    entry = store.entry(COMPANY, "catalogBrand", "lg")
    assert entry["message_uuid"] == msg.uuid and entry["updated_at"].endswith("+00:00")
    assert store.count() == 2 and store.count(COMPANY, "catalogBrand") == 2
    assert store.count("other") == 0 and store.count(catalog="catalogZone") == 0


def test_update_replaces_fields(worker: Any, store: Any) -> None:
    worker.process(message({"operation": "I", "code": "sony", "name": "Sony", "country": "JP"}))
    update = message({"operation": "U", "code": "sony", "name": "Sony Corp"})
    assert counts(worker.process(update)) == (0, 1, 0)
    assert store.get(COMPANY, "catalogBrand", "sony") == {"code": "sony", "name": "Sony Corp"}  # not merged
    assert store.entry(COMPANY, "catalogBrand", "sony")["message_uuid"] == update.uuid


def test_delete(worker: Any, store: Any) -> None:
    worker.process(message({"operation": "I", "code": "sony"}, {"operation": "I", "code": "lg"}))
    assert counts(worker.process(message({"operation": "D", "code": "sony", "name": "ignored"}))) == (0, 0, 1)
    assert store.get(COMPANY, "catalogBrand", "sony") is None
    assert store.count() == 1


def test_insert_or_update_both_ways(worker: Any, store: Any) -> None:
    assert counts(worker.process(message({"operation": "IU", "code": "bf2019", "name": "Black Friday"}))) == (1, 0, 0)
    assert counts(worker.process(message({"operation": "IU", "code": "bf2019", "name": "BF 2019"}))) == (0, 1, 0)
    assert store.get(COMPANY, "catalogBrand", "bf2019") == {"code": "bf2019", "name": "BF 2019"}


def test_items_apply_in_order_within_one_message(worker: Any, store: Any) -> None:
    msg = message(
        {"operation": "I", "code": "a", "v": 1},
        {"operation": "U", "code": "a", "v": 2},
        {"operation": "I", "code": "b"},
        {"operation": "D", "code": "b"},
    )
    assert counts(worker.process(msg)) == (2, 1, 1)
    assert store.get(COMPANY, "catalogBrand", "a") == {"code": "a", "v": 2} and store.count() == 1


def test_entries_are_keyed_by_company_catalog_and_code(worker: Any, store: Any) -> None:
    worker.process(message({"operation": "I", "code": "x"}))
    worker.process(message({"operation": "I", "code": "x"}, catalog="catalogZone"))
    other = message({"operation": "I", "code": "x"})
    other.data["companyId"] = "acme"
    worker.process(other)
    assert store.count() == 3 and store.count(COMPANY) == 2 and store.count("acme", "catalogBrand") == 1


def test_whole_number_code_is_the_same_entry_as_its_text(worker: Any, store: Any) -> None:
    worker.process(message({"operation": "I", "code": 7, "name": "seven"}))
    assert store.get(COMPANY, "catalogBrand", "7") == {"code": 7, "name": "seven"}
    assert counts(worker.process(message({"operation": "U", "code": "7", "name": "siete"}))) == (0, 1, 0)


def test_seed_example_with_many_fields(worker: Any, store: Any) -> None:
    item = {
        "operation": "I", "code": "sonyArg", "category": "lineaBlanca", "creditProduct": "40 por ciento",
        "yearsWarranty": "2 años", "initDate": None, "endPrice": 13999,
    }
    worker.process(message(item, catalog="catalogExtendWarranty"))
    stored = store.get(COMPANY, "catalogExtendWarranty", "sonyArg")
    assert stored == {k: v for k, v in item.items() if k != "operation"}


# -- all or nothing, conflicts --------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "error", "fragments"),
    [
        ({"operation": "I", "code": "old"}, "CatalogConflict", ["items[2]", "'I'", "'old'", "already in catalogBrand"]),
        ({"operation": "U", "code": "nope"}, "CatalogConflict", ["items[2]", "'U'", "'nope'", "not in catalogBrand"]),
        ({"operation": "D", "code": "nope"}, "CatalogConflict", ["items[2]", "'D'", "'nope'", "nothing to delete"]),
        ({"operation": "X", "code": "c"}, "Unrecoverable", ["items[2]", "'X'", "'c'", "I, U, D, IU"]),
        ({"operation": "I"}, "Unrecoverable", ["items[2]", "'I'", "code", "None"]),
    ],
    ids=["insert-existing", "update-missing", "delete-missing", "bad-operation", "no-code"],
)
def test_one_bad_item_applies_nothing(
    worker: Any, store: Any, bad: dict[str, Any], error: str, fragments: list[str]
) -> None:
    worker.process(message({"operation": "I", "code": "old", "name": "before"}))
    msg = message(
        {"operation": "IU", "code": "old", "name": "after"},
        {"operation": "I", "code": "new"},
        bad,
        {"operation": "I", "code": "later"},
    )
    with pytest.raises(Unrecoverable) as info:
        worker.process(msg)
    assert type(info.value).__name__ == error
    for fragment in fragments:
        assert fragment in str(info.value)
    assert store.count() == 1 and store.get(COMPANY, "catalogBrand", "old") == {"code": "old", "name": "before"}
    # Nothing recorded either: the corrected message can be applied under the same uuid.
    msg.data["items"][2] = {"operation": "IU", "code": "fixed"}
    assert counts(worker.process(msg)) == (3, 1, 0)


def test_conflict_names_company(worker: Any) -> None:
    with pytest.raises(Unrecoverable, match=r"items\[0\] \(operation 'U', code 'ghost'\): not in catalogBrand "
                                            r"of company 'napse'; use I or IU to add it"):
        worker.process(message({"operation": "U", "code": "ghost"}))


# -- validation -----------------------------------------------------------------------------
#: Marks a key that base() leaves out.
DROP = object()


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"companyId": COMPANY, "catalog": "catalogBrand", "items": [{"operation": "I", "code": "a"}]}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (["not", "an", "object"], ["data must be an object", "list"]),
        (base(companyId=DROP), ["companyId", "None"]),
        (base(companyId="  "), ["companyId", "'  '"]),
        (base(companyId=12), ["companyId", "12"]),
        (base(catalog=DROP), ["catalog", "None"]),
        (base(catalog="catalogBrnad"), ["unknown catalog 'catalogBrnad'", "did you mean catalogBrand?",
                                        "QENGINE_CATALOG_DYNAMIC", "declared: none"]),
        (base(catalog="brands"), ["unknown catalog 'brands'"]),
        (base(catalog="catalogbrand"), ["unknown catalog 'catalogbrand'", "catalogBrand"]),  # case matters
        (base(params="x"), ["params", "'x'"]),
        (base(items=DROP), ["items must be a non-empty list", "NoneType"]),
        (base(items={"operation": "I"}), ["items must be a non-empty list", "dict"]),
        (base(items=[]), ["items is empty", "catalogBrand", "'napse'"]),
        (base(items=[{"operation": "I", "code": "a"}, "junk"]), ["items[1] must be an object", "str"]),
        (base(items=[{"operation": "i", "code": "a"}]), ["items[0]", "unknown operation 'i'", "valid: I, U, D, IU"]),
        (base(items=[{"code": "a"}]), ["items[0]", "unknown operation None", "'a'"]),
        (base(items=[{"operation": "U", "code": ""}]), ["items[0]", "operation 'U'", "code", "''"]),
        (base(items=[{"operation": "D", "code": "   "}]), ["items[0]", "code", "'   '"]),
        (base(items=[{"operation": "I", "code": True}]), ["items[0]", "code", "True"]),
        (base(items=[{"operation": "I", "code": ["a"]}]), ["items[0]", "code", "['a']"]),
        (base(items=[{"operation": "I", "code": "a"}, {"operation": "IU", "code": 1.5}]), ["items[1]", "1.5"]),
    ],
)
def test_invalid_data_is_unrecoverable_and_names_the_value(
    worker: Any, db: Path, data: Any, fragments: list[str]
) -> None:
    with pytest.raises(Unrecoverable) as info:
        worker.process(QueueMessage(data=data, uuid=str(uuidlib.uuid4())))
    assert type(info.value) is Unrecoverable
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not db.exists()  # refused before the store was opened


def test_params_optional_or_list_or_object(worker: Any, store: Any) -> None:
    for params in (DROP, None, [], {"source": "erp"}):
        worker.process(QueueMessage(data=base(params=params, items=[{"operation": "IU", "code": "a"}])))
    assert store.count() == 1


def test_missing_database_variable(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QENGINE_CATALOG_DB")
    with pytest.raises(Unrecoverable, match="set the QENGINE_CATALOG_DB environment variable"):
        worker.process(message({"operation": "I", "code": "a"}))


# -- catalogs -------------------------------------------------------------------------------
def test_every_seed_catalog_is_accepted(mod: types.ModuleType, worker: Any, store: Any) -> None:
    assert len(mod.CATALOGS) == 28
    for catalog in sorted(mod.CATALOGS):
        worker.process(message({"operation": "I", "code": "c"}, catalog=catalog))
    assert store.count(COMPANY) == 28


def test_dynamic_catalog_declared_in_environment(
    worker: Any, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Unrecoverable, match="unknown catalog 'catalogColor'.*declared: none"):
        worker.process(message({"operation": "I", "code": "red"}, catalog="catalogColor"))
    monkeypatch.setenv("QENGINE_CATALOG_DYNAMIC", "catalogColor, catalogSeason")
    worker.process(message({"operation": "I", "code": "red"}, catalog="catalogColor"))
    worker.process(message({"operation": "I", "code": "w24"}, catalog="catalogSeason"))
    assert store.count(catalog="catalogColor") == store.count(catalog="catalogSeason") == 1
    with pytest.raises(Unrecoverable, match=r"'catalogColour' \(did you mean catalogColor\?\).*"
                                            r"declared: catalogColor, catalogSeason\)"):
        worker.process(message({"operation": "I", "code": "red"}, catalog="catalogColour"))


def test_dynamic_catalog_declared_by_subclass(mod: types.ModuleType, store: Any) -> None:
    class ShopCatalogWorker(mod.CatalogWorker):  # type: ignore[name-defined]
        dynamic_catalogs = ("catalogColor",)

    ShopCatalogWorker().process(message({"operation": "I", "code": "red"}, catalog="catalogColor"))
    assert store.get(COMPANY, "catalogColor", "red") == {"code": "red"}


@pytest.mark.parametrize("declared", ["Color", "catalog", "catalog-color", "catalogCol or"])
def test_badly_declared_dynamic_catalog(worker: Any, monkeypatch: pytest.MonkeyPatch, declared: str) -> None:
    monkeypatch.setenv("QENGINE_CATALOG_DYNAMIC", f"catalogOk,{declared}")
    bad = declared.split()[-1]
    with pytest.raises(Unrecoverable, match=f"dynamic catalog '{bad}' .*QENGINE_CATALOG_DYNAMIC"):
        worker.process(message({"operation": "I", "code": "a"}))


# -- redelivery and transient errors --------------------------------------------------------
def test_redelivery_of_the_same_uuid_is_not_applied_twice(worker: Any, store: Any) -> None:
    msg = message({"operation": "I", "code": "a"}, {"operation": "IU", "code": "b"})
    first = worker.process(msg)
    worker.process(message({"operation": "U", "code": "b", "name": "later"}))
    again = worker.process(msg)  # I of "a" would conflict, IU of "b" would undo the later update
    assert again == {**first, "redelivery": True}
    assert store.get(COMPANY, "catalogBrand", "b") == {"code": "b", "name": "later"}
    with pytest.raises(Unrecoverable, match="already in"):  # another message with the same data does conflict
        worker.process(message({"operation": "I", "code": "a"}))


def test_message_without_uuid_is_applied_without_record(worker: Any, store: Any) -> None:
    assert counts(worker.process(message({"operation": "IU", "code": "a"}, uuid=None))) == (1, 0, 0)
    assert counts(worker.process(message({"operation": "IU", "code": "a"}, uuid=None))) == (0, 1, 0)
    assert store.entry(COMPANY, "catalogBrand", "a")["message_uuid"] is None


def test_locked_database_propagates_and_applies_nothing(mod: types.ModuleType, db: Path, store: Any) -> None:
    class QuickWorker(mod.CatalogWorker):  # type: ignore[name-defined]
        busy_timeout = 0.05

    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        msg = message({"operation": "I", "code": "a"})
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            QuickWorker().process(msg)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert store.count() == 0
    assert counts(QuickWorker().process(msg)) == (1, 0, 0)  # the retry succeeds


# -- end to end -----------------------------------------------------------------------------
@pytest.fixture
def open_app(tmp_path: Path) -> Iterator[Callable[..., QueueManager]]:
    opened: list[QueueManager] = []

    def factory(extra: str = "") -> QueueManager:
        ini = tmp_path / "config.ini"
        ini.write_text(
            f"[queue]\nqueueType = file\ncacheRoot = q\nfsync = never\nworkersPath = {REPO / 'workers'}\n"
            f"[worker.CATALOG]\nbackoff = fixed\nretryDelay = 0\n{textwrap.dedent(extra)}"
        )
        manager = QueueFactory.get_queue_manager(load_config(ini))
        opened.append(manager)
        return manager

    yield factory
    for manager in opened:
        manager.close()


def add(manager: QueueManager, data: Any, **kwargs: Any) -> str:
    return manager.add_message("CATALOG", QueueMessage(data=data, **kwargs))


def test_runner_drains_the_queue(open_app: Callable[..., QueueManager], db: Path, mod: types.ModuleType) -> None:
    manager = open_app()
    good = add(manager, base(items=[{"operation": "I", "code": "sony", "name": "Sony"}]))
    typo = add(manager, base(catalog="catalogBrnad"))
    conflict = add(manager, base(items=[{"operation": "IU", "code": "lg"}, {"operation": "I", "code": "sony"}]))
    update = add(manager, base(items=[{"operation": "U", "code": "sony", "name": "Sony Corp"}]))
    runner = WorkerRunner(manager, ["CATALOG"], config=manager.config, burst=True)
    assert type(runner.handlers["CATALOG"].worker).__name__ == "CatalogWorker"
    assert runner.run() == 4  # Unrecoverable: one attempt each, no retry

    failed = {f.message.uuid: f.errors for f in manager.failed_messages("CATALOG")}
    assert set(failed) == {typo, conflict}
    assert failed[typo][0].startswith("Unrecoverable: unknown catalog 'catalogBrnad' (did you mean catalogBrand?)")
    assert failed[conflict] == [
        "CatalogConflict: items[1] (operation 'I', code 'sony'): already in catalogBrand of company 'napse'; "
        "use U or IU to change it"
    ]
    with mod.CatalogStore(db) as store:
        assert store.count() == 1  # the conflicting message's IU of "lg" was rolled back
        assert store.entry(COMPANY, "catalogBrand", "sony") == {
            "fields": {"code": "sony", "name": "Sony Corp"},
            "updated_at": store.entry(COMPANY, "catalogBrand", "sony")["updated_at"],
            "message_uuid": update,
        }
    records = {r.uuid: r for r in get_audit_log(manager).query("CATALOG")}
    assert records[good].outcome == "success"
    assert records[good].extra == {
        "companyId": COMPANY, "catalog": "catalogBrand", "items": 1,
        "inserted": 1, "updated": 0, "deleted": 0, "redelivery": False,
    }
    assert records[typo].outcome == "failed" and records[typo].extra == {}


def test_runner_retries_an_unreachable_database(
    open_app: Callable[..., QueueManager], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    monkeypatch.setenv("QENGINE_CATALOG_DB", str(tmp_path / "no-such-folder" / "catalog.sqlite3"))
    manager = open_app("retries = 3\n")
    uid = add(manager, base())
    assert WorkerRunner(manager, ["CATALOG"], config=manager.config, burst=True).run() == 3
    [failed] = manager.failed_messages("CATALOG")
    assert failed.message.uuid == uid
    assert failed.errors == ["OperationalError: unable to open database file"] * 3


def test_requeued_after_fix_and_redelivered(
    open_app: Callable[..., QueueManager], db: Path, mod: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = open_app()
    uid = add(manager, base(catalog="catalogColor"))
    WorkerRunner(manager, ["CATALOG"], config=manager.config, burst=True).run()
    assert [f.message.uuid for f in manager.failed_messages("CATALOG")] == [uid]
    monkeypatch.setenv("QENGINE_CATALOG_DYNAMIC", "catalogColor")  # the operator declares it
    assert manager.requeue_failed("CATALOG") == [uid]  # the same uuid goes back
    assert WorkerRunner(manager, ["CATALOG"], config=manager.config, burst=True).run() == 1
    assert manager.failed_messages("CATALOG") == []
    # A copy of the same message (same uuid) delivered again is a no-op, not a conflict.
    copy = QueueMessage(data=base(catalog="catalogColor"), uuid=uid)
    assert mod.CatalogWorker().process(copy)["redelivery"] is True
    with mod.CatalogStore(db) as store:
        assert store.count(catalog="catalogColor") == 1


def test_qengine_work_subprocess(tmp_path: Path, db: Path, mod: types.ModuleType) -> None:
    config = tmp_path / "config.ini"
    config.write_text(
        f"[queue]\nqueueType = file\ncacheRoot = {tmp_path / 'data'}\nfsync = never\n"
        f"workersPath = {REPO / 'workers'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QENGINE_CONFIG"}

    def qengine(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "queue_engine", "--config", str(config), *args],
            capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=tmp_path,
        )

    items = [{"operation": "I", "code": "bf2019", "name": "Black Friday 2019"}]
    good = json.dumps({"companyId": COMPANY, "catalog": "catalogEventTransactionType", "params": [], "items": items})
    for data in (good, json.dumps(base(items=[{"operation": "D", "code": "ghost"}]))):
        proc = qengine("add", "CATALOG", "--data", data)
        assert proc.returncode == 0, proc.stderr
    proc = qengine("work", "CATALOG", "--burst")
    assert (proc.returncode, proc.stdout) == (0, "handled 2 attempts\n"), proc.stderr
    assert "CatalogConflict: items[0] (operation 'D', code 'ghost')" in proc.stderr
    failed = json.loads(qengine("failed", "--json").stdout)
    assert [f["errors"] for f in failed] == [
        ["CatalogConflict: items[0] (operation 'D', code 'ghost'): not in catalogBrand of company 'napse', "
         "nothing to delete"]
    ]
    with mod.CatalogStore(db) as store:
        assert store.get(COMPANY, "catalogEventTransactionType", "bf2019") == {
            "code": "bf2019", "name": "Black Friday 2019"
        }
