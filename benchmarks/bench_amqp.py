"""Benchmark qengine's RabbitMQ bridge against hand-written pika code, on one running broker.

Usage (from the repository root, in a venv with pika)::

    .venv/bin/python benchmarks/bench_amqp.py [--uri amqp://guest:guest@127.0.0.1:5672/%2F] [--n 5000]
                                              [--repeats 3] [--json]

The broker is the one at ``--uri`` (it must be running; nothing is started here). Every
measurement uses its own durable RabbitMQ queue (``qengine-bench-<run>-<case>-<i>``), deleted
when it ends; the qengine side is a file backend (``fsync = batch``, the default) in a fresh
temporary directory. Every engine opens its connection inside the timed span. Each case runs
``--repeats`` times, interleaved; the median and the range are reported. Nothing here asserts a timing.

Cases (N messages of ~100 bytes of JSON each):

* ``out``  messages moved from a store to RabbitMQ per second.
  qengine: an outbox queue (``[amqp.OUT]``) drained by ``WorkerRunner(manager, ["OUT"], burst=True)``:
  reserve, one persistent ``mandatory`` publish, wait for the confirm, ack, audit record.
  Peers: pika ``BlockingChannel`` with ``confirm_delivery()``, one persistent publish at a
  time (a hand-written safe publisher, nothing stored on our side); and pika without confirms
  (unsafe: an upper bound, a message can be lost with nobody knowing).
* ``in``   messages moved from RabbitMQ into a store per second, from a queue pre-loaded with N.
  qengine: ``AmqpConsumer(..., prefetch=100).run(burst=True, idle=0.5)`` adding each delivery
  to a file-backend queue, acking after the add; timed to the N-th add (the ``idle`` tail,
  which only detects the end of a burst, is reported apart). Peer: pika ``consume`` with
  manual ack per delivery, prefetch 100, doing nothing with the body (an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import cpu_model  # noqa: E402 - benchmarks/ is the script folder

from queue_engine import QueueFactory, QueueMessage  # noqa: E402
from queue_engine.amqp import AmqpConsumer, endpoint_from_uri  # noqa: E402
from queue_engine.runner import WorkerRunner  # noqa: E402

DEFAULT_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"
OUTBOX = "OUT"
INBOX = "IN"
PREFETCH = 100
IDLE = 0.5
HANG_GUARD = 60.0


def payload(i: int) -> dict[str, Any]:
    """The benchmark message: about 100 bytes once encoded as JSON."""
    return {"id": i, "plate": "AB123CD", "camera": 7, "lane": 2, "confidence": 0.93,
            "seen_at": "2024-05-01T12:00:00Z"}


def body(i: int) -> bytes:
    return json.dumps(payload(i), separators=(",", ":")).encode("utf-8")


PERSISTENT = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent)


class Broker:
    """An admin connection: declares and deletes the run's queues, counts their messages."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.run_id = uuid.uuid4().hex[:8]
        self.connection = pika.BlockingConnection(pika.URLParameters(uri))
        self.channel = self.connection.channel()
        self.declared: list[str] = []

    def fresh_queue(self, case: str) -> str:
        name = f"qengine-bench-{self.run_id}-{case}-{len(self.declared)}"
        self.channel.queue_declare(name, durable=True)
        self.declared.append(name)
        return name

    def depth(self, name: str) -> int:
        return int(self.channel.queue_declare(name, passive=True).method.message_count)

    def wait_depth(self, name: str, n: int) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while self.depth(name) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ queue {name} holds {self.depth(name)} messages, expected {n}")
            time.sleep(0.02)

    def delete(self, name: str) -> None:
        self.channel.queue_delete(name)
        self.declared.remove(name)

    def server_version(self) -> str:
        props = self.connection._impl.server_properties  # pika keeps them only on the impl
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)

    def close(self) -> None:
        for name in list(self.declared):
            try:
                self.delete(name)
            except pika.exceptions.AMQPError as exc:
                print(f"could not delete RabbitMQ queue {name}: {exc}", file=sys.stderr)
        self.connection.close()


def connect(uri: str) -> tuple[pika.BlockingConnection, BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    return connection, connection.channel()


def qengine_config(workdir: str, uri: str, routing_key: str) -> str:
    path = os.path.join(workdir, "config.ini")
    with open(path, "w") as fh:
        fh.write(
            f"[queue]\nqueueType = file\ncacheRoot = {os.path.join(workdir, 'data')}\nfsync = batch\n\n"
            f"[amqp.{OUTBOX}]\nuri = {uri}\nroutingKey = {routing_key}\n"
        )
    return path


# -- outbound: each returns msgs/s, and leaves N messages in ``target`` ---------------------------
def out_qengine(broker: Broker, target: str, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="qengine-bench-amqp-") as workdir:
        manager = QueueFactory.get_queue_manager(qengine_config(workdir, broker.uri, target))
        try:
            manager.add_messages(OUTBOX, [QueueMessage(data=payload(i)) for i in range(n)])
            runner = WorkerRunner(manager, [OUTBOX], burst=True)
            start = time.perf_counter()
            handled = runner.run()
            elapsed = time.perf_counter() - start
            for handler in runner.handlers.values():
                close = getattr(handler.worker, "close", None)
                if close is not None:
                    close()
            left = manager.queue_status(OUTBOX).messages_to_process
            if handled != n or left:
                raise RuntimeError(f"qengine outbox: {handled} handled, {left} left, expected {n} and 0")
        finally:
            manager.close()
    return n / elapsed


def _out_pika(broker: Broker, target: str, n: int, *, confirms: bool) -> float:
    bodies = [body(i) for i in range(n)]
    start = time.perf_counter()
    connection, channel = connect(broker.uri)
    try:
        if confirms:
            channel.confirm_delivery()  # basic_publish now waits for each confirm, raises on nack/return
        for item in bodies:
            channel.basic_publish("", target, item, PERSISTENT, mandatory=confirms)
        if not confirms:
            connection.process_data_events(0)  # flush what pika buffered, as a closing publisher would
        elapsed = time.perf_counter() - start
    finally:
        connection.close()
    return n / elapsed


def out_pika_confirm(broker: Broker, target: str, n: int) -> float:
    return _out_pika(broker, target, n, confirms=True)


def out_pika_unsafe(broker: Broker, target: str, n: int) -> float:
    return _out_pika(broker, target, n, confirms=False)


# -- inbound: each takes a queue pre-loaded with N, returns (msgs/s to the N-th, idle tail s) ------
def in_qengine(broker: Broker, source: str, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="qengine-bench-amqp-") as workdir:
        manager = QueueFactory.get_queue_manager(qengine_config(workdir, broker.uri, "unused"))
        try:
            manager.create_queue(INBOX)
            consumer = AmqpConsumer(manager, source, INBOX, endpoint=endpoint_from_uri(broker.uri), prefetch=PREFETCH)
            done: list[float] = []

            def on_message(outcome: str) -> None:
                if consumer.added == n:
                    done.append(time.perf_counter())

            start = time.perf_counter()
            try:
                consumer.run(burst=True, idle=IDLE, on_message=on_message)
            finally:
                consumer.close()
            end = time.perf_counter()
            stored = manager.queue_status(INBOX).messages_to_process
            if not done or stored != n:
                raise RuntimeError(f"qengine inbox: {consumer.added} added, {stored} stored, expected {n}")
        finally:
            manager.close()
    return n / (done[0] - start), end - done[0]


def in_pika(broker: Broker, source: str, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    connection, channel = connect(broker.uri)
    try:
        channel.basic_qos(prefetch_count=PREFETCH)
        count = 0
        for method, _properties, _body in channel.consume(source, auto_ack=False, inactivity_timeout=HANG_GUARD):
            if method is None:
                raise RuntimeError(f"pika consumer: no delivery for {HANG_GUARD}s after {count}")
            channel.basic_ack(method.delivery_tag)
            count += 1
            if count == n:
                break
        elapsed = time.perf_counter() - start
        channel.cancel()
    finally:
        connection.close()
    return n / elapsed, 0.0


def preload(broker: Broker, target: str, n: int) -> None:
    """N persistent messages with a ``message_id`` each (as qengine's outbox sends them)."""
    connection, channel = connect(broker.uri)
    try:
        for i in range(n):
            props = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                         message_id=str(uuid.uuid4()))
            channel.basic_publish("", target, body(i), props)
    finally:
        connection.close()
    broker.wait_depth(target, n)


Q_OUT = "qengine outbox (WorkerRunner + AmqpPublisher)"
P_CONFIRM = "pika, confirm per publish"
P_UNSAFE = "pika, no confirms (unsafe)"
OUT_ENGINES: dict[str, Callable[[Broker, str, int], float]] = {
    Q_OUT: out_qengine,
    P_CONFIRM: out_pika_confirm,
    P_UNSAFE: out_pika_unsafe,
}
Q_IN = "qengine AmqpConsumer -> file queue"
P_IN = "pika consume + ack, body dropped"
IN_ENGINES: dict[str, Callable[[Broker, str, int], tuple[float, float]]] = {
    Q_IN: in_qengine,
    P_IN: in_pika,
}


def machine(broker: Broker) -> dict[str, str]:
    cpu = cpu_model()
    return {
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "pika": metadata.version("pika"),
        "rabbitmq-server": broker.server_version(),
        "broker": endpoint_from_uri(broker.uri).display(),
        "qengine store": "file backend, fsync = batch (default), temp dir " + tempfile.gettempdir(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=DEFAULT_URI, help="RabbitMQ to use (default %(default)s)")
    parser.add_argument("--n", type=int, default=5000, help="messages per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    broker = Broker(args.uri)
    out: dict[str, list[float]] = {name: [] for name in OUT_ENGINES}
    inbound: dict[str, list[float]] = {name: [] for name in IN_ENGINES}
    tails: list[float] = []
    try:
        for _ in range(args.repeats):
            for name, bench_out in OUT_ENGINES.items():  # interleaved: noise spreads over every engine
                queue = broker.fresh_queue("out")
                out[name].append(bench_out(broker, queue, args.n))
                broker.wait_depth(queue, args.n)  # every message arrived, none twice
                broker.delete(queue)
            for name, bench_in in IN_ENGINES.items():
                queue = broker.fresh_queue("in")
                preload(broker, queue, args.n)
                rate, tail = bench_in(broker, queue, args.n)
                inbound[name].append(rate)
                if name == Q_IN:
                    tails.append(tail)
                if broker.depth(queue):
                    raise RuntimeError(f"{name} left messages in {queue}")
                broker.delete(queue)
        facts = machine(broker)
    finally:
        broker.close()
    med_out = {name: statistics.median(v) for name, v in out.items()}
    med_in = {name: statistics.median(v) for name, v in inbound.items()}
    if args.json:
        print(json.dumps({"n": args.n, "repeats": args.repeats, "machine": facts, "out_msgs_per_s": med_out,
                          "in_msgs_per_s": med_in, "in_idle_tail_s": statistics.median(tails),
                          "samples": {"out": out, "in": inbound}}, indent=2))
        return
    print(f"RabbitMQ bridge benchmark: n={args.n} messages of ~{len(body(0))} bytes JSON per measurement, "
          f"median of {args.repeats}, one client, connection opened inside the timed span\n")
    print("| direction | engine | msgs/s (median) | min - max | qengine / this |")
    print("|---|---|---:|---:|---:|")
    for direction, samples, medians, ours in (
        ("out: store -> RabbitMQ", out, med_out, Q_OUT),
        ("in: RabbitMQ -> store", inbound, med_in, Q_IN),
    ):
        for name, value in medians.items():
            ratio = "—" if name == ours else f"{medians[ours] / value:.2f}x"
            spread = f"{min(samples[name]):,.0f} - {max(samples[name]):,.0f}"
            print(f"| {direction} | {name} | {value:,.0f} | {spread} | {ratio} |")
    print()
    print(f"- qengine inbound is timed to the {args.n}-th add; run(burst=True, idle={IDLE}) then waits "
          f"{statistics.median(tails):.2f} s more (median) to see the queue is empty.")
    print("- out: every message is persistent, to a durable queue; qengine and the confirming peer wait for each "
          "confirm before the next publish; qengine also reserves, acks and audits each message.")
    print(f"- in: prefetch {PREFETCH}, manual ack per delivery; preloaded messages carry a message_id, "
          "which qengine uses as the alias (on_duplicate='ignore').")
    for key, fact in facts.items():
        print(f"- {key}: {fact}")


if __name__ == "__main__":
    main()
