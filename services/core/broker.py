"""Message broker: RabbitMQ through pika, or an in-process broker for ``serve``.

Both offer the same small interface: ``publish`` (returns only once the broker has taken
responsibility: publisher confirms on RabbitMQ) and ``consume`` (a blocking loop that hands
each message to a handler on a worker thread and settles it by the handler's verdict).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from services.core.backoff import Backoff
from services.core.errors import TransientError
from services.core.messages import ROUTES

log = logging.getLogger(__name__)


class Verdict(Enum):
    """What a handler decided about a message."""

    ACK = "ack"  # done (committed): remove it
    RETRY = "retry"  # transient failure: redeliver later (bounded by the delivery limit)
    REJECT = "reject"  # permanent failure: straight to the dead-letter queue


@dataclass(frozen=True)
class Delivered:
    body: bytes
    message_id: str
    routing_key: str
    redelivered: bool
    delivery_count: int = 0
    headers: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Delivered], Verdict]


class PublishError(TransientError, RuntimeError):
    """The broker did not confirm a message; the caller keeps it and tries again."""

    code = "broker-unavailable"


class Broker(Protocol):
    def declare(self) -> None: ...

    def publish(self, routing_key: str, body: str, message_id: str) -> None: ...

    def consume(self, queue_name: str, handler: Handler, stop: threading.Event) -> None: ...

    def queue_depth(self, queue_name: str) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Topology:
    """Names derived from one prefix; the default prefix gives the names of
    docs/architecture.md ("Messages")."""

    prefix: str = "noduleflow"
    delivery_limit: int = 5

    @property
    def exchange(self) -> str:
        return self.prefix

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    def queue(self, routing_key: str) -> str:
        base = ROUTES[routing_key]
        return self.prefix + base.removeprefix("noduleflow")

    def queue_for(self, logical_queue: str) -> str:
        """Map a logical queue name (``noduleflow.inference``) into this prefix."""
        return self.prefix + logical_queue.removeprefix("noduleflow")

    def routing_keys(self) -> dict[str, str]:
        return {key: self.queue(key) for key in ROUTES}


# --------------------------------------------------------------------------- in-process


class InProcessBroker:
    """Thread-safe queues in memory for the one-machine form; the database is the truth."""

    def __init__(self, topology: Topology | None = None, retry_delay: float = 0.5) -> None:
        self.topology = topology or Topology()
        self.retry_delay = retry_delay
        self._queues: dict[str, queue.Queue[Delivered]] = {}
        self.dead: dict[str, list[Delivered]] = {}
        self._lock = threading.Lock()
        self.declare()

    def declare(self) -> None:
        with self._lock:
            for name in self.topology.routing_keys().values():
                self._queues.setdefault(name, queue.Queue())
                self.dead.setdefault(name, [])

    def publish(self, routing_key: str, body: str, message_id: str) -> None:
        name = self.topology.queue(routing_key)
        self._queues[name].put(Delivered(body.encode(), message_id, routing_key, False, 0))

    def consume(self, queue_name: str, handler: Handler, stop: threading.Event) -> None:
        q = self._queues[self.topology.queue_for(queue_name)]
        while not stop.is_set():
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                verdict = handler(item)
            except Exception:
                log.exception("event=handler_crashed queue=%s", queue_name)
                verdict = Verdict.RETRY
            if verdict is Verdict.RETRY and item.delivery_count + 1 < self.topology.delivery_limit:
                time.sleep(self.retry_delay)
                q.put(
                    Delivered(
                        item.body, item.message_id, item.routing_key, True, item.delivery_count + 1
                    )
                )
            elif verdict is not Verdict.ACK:
                self.dead[self.topology.queue_for(queue_name)].append(item)

    def queue_depth(self, queue_name: str) -> int:
        """Messages waiting in ``queue_name``; ``<queue>.dead`` is its dead-letter list."""
        name = self.topology.queue_for(queue_name)
        if name.endswith(".dead") and name not in self._queues:
            return len(self.dead.get(name.removesuffix(".dead"), []))
        return self._queues[name].qsize()

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- RabbitMQ


def declare_topology(channel: BlockingChannel, topology: Topology) -> None:
    """Durable direct exchange, quorum queues with a delivery limit, dead-letter queues."""
    channel.exchange_declare(topology.exchange, "direct", durable=True)
    channel.exchange_declare(topology.dead_letter_exchange, "direct", durable=True)
    for routing_key, name in topology.routing_keys().items():
        dead = f"{name}.dead"
        channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(dead, topology.dead_letter_exchange, routing_key=name)
        channel.queue_declare(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": topology.delivery_limit,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-dead-letter-routing-key": name,
                # Dead letters use RabbitMQ's default (at-most-once) strategy: the at-least-once
                # dead-letter worker of RabbitMQ 3.10 crashes when such a queue is deleted and
                # leaves every quorum queue of the node unusable until a restart. Nothing is
                # lost by this: a job's failure is committed to the database before its message
                # is rejected; the dead-letter copy is for diagnosis.
                "x-overflow": "reject-publish",
            },
        )
        channel.queue_bind(name, topology.exchange, routing_key=routing_key)


def delete_topology(channel: BlockingChannel, topology: Topology) -> None:
    """Delete what :func:`declare_topology` declared (queues, dead-letter queues, exchanges)."""
    for name in topology.routing_keys().values():
        channel.queue_delete(name)
        channel.queue_delete(f"{name}.dead")
    channel.exchange_delete(topology.exchange)
    channel.exchange_delete(topology.dead_letter_exchange)


class RabbitBroker:
    """pika-based broker. Publishing is thread-safe (one lock); consuming owns its connection."""

    def __init__(
        self,
        url: str,
        topology: Topology | None = None,
        *,
        heartbeat: int = 30,
        retry_delay: float = 2.0,
    ) -> None:
        self.params = pika.URLParameters(url)
        self.params.heartbeat = heartbeat
        self.params.blocked_connection_timeout = 30
        self.params.connection_attempts = 1
        if not (self.params.client_properties or {}).get("connection_name"):
            # Shown by the management UI and ``rabbitmqctl list_connections``.
            name = f"noduleflow {socket.gethostname()}:{os.getpid()}"
            self.params.client_properties = {"connection_name": name}
        self.topology = topology or Topology()
        self.retry_delay = retry_delay
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params)

    def declare(self) -> None:
        conn = self._connect()
        try:
            declare_topology(conn.channel(), self.topology)
        finally:
            conn.close()

    def _publish_channel(self) -> BlockingChannel:
        if self._conn is not None and self._channel is not None and self._channel.is_open:
            try:
                # An idle BlockingConnection only services heartbeats when asked to; without
                # this the broker drops it after two missed intervals and the next publish
                # fails. A dead connection shows up here instead and is replaced below.
                self._conn.process_data_events(time_limit=0)
            except (pika.exceptions.AMQPError, OSError):
                self._drop()
        if self._channel is None or not self._channel.is_open:
            self._drop()
            self._conn = self._connect()
            self._channel = self._conn.channel()
            declare_topology(self._channel, self.topology)
            self._channel.confirm_delivery()
        return self._channel

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                log.debug("event=broker_close_failed", exc_info=True)

    def publish(self, routing_key: str, body: str, message_id: str) -> None:
        """Publish persistently; return only when confirmed, else raise PublishError."""
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            message_id=message_id,
        )
        with self._lock:
            for attempt in (1, 2):  # once more on a fresh connection if the old one died
                try:
                    channel = self._publish_channel()
                    channel.basic_publish(
                        self.topology.exchange, routing_key, body.encode(), props, mandatory=True
                    )
                    return
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                    raise PublishError(f"broker refused message {message_id}: {exc}") from exc
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._drop()
                    if attempt == 2 or not isinstance(
                        exc, pika.exceptions.AMQPConnectionError | pika.exceptions.AMQPChannelError
                    ):
                        raise PublishError(f"broker unavailable: {exc.__class__.__name__}") from exc

    def queue_depth(self, queue_name: str) -> int:
        with self._lock:
            channel = self._publish_channel()
            result = channel.queue_declare(self.topology.queue_for(queue_name), passive=True)
            return int(result.method.message_count)

    def consume(self, queue_name: str, handler: Handler, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, reconnecting with backoff; see ``_Consumer``.

        After a lost connection the handler of the message in flight keeps running (its
        verdict can no longer be settled; the broker redelivers the message). No new
        connection is opened until it returns, so one call never runs two handlers at once
        (a worker runs one call per job it may hold), and this method returns only when no
        handler is running.
        """
        backoff = Backoff(first=0.5, cap=30.0)
        while not stop.is_set():
            consumer = _Consumer(self, self.topology.queue_for(queue_name), handler, stop)
            try:
                consumer.run()
                backoff.reset()
            except (pika.exceptions.AMQPError, OSError) as exc:
                if consumer.consuming:
                    backoff.reset()  # it had worked: start the backoff afresh
                delay = backoff.failed()
                log.warning(
                    "event=broker_consume_lost queue=%s error=%s retry_in=%.1f",
                    queue_name,
                    exc.__class__.__name__,
                    delay,
                )
                consumer.wait_idle()  # before backing off and reconnecting
                stop.wait(delay)
            finally:
                consumer.wait_idle()  # also on a clean stop: return only when idle

    def close(self) -> None:
        with self._lock:
            self._drop()


class _Consumer:
    """One connection's worth of consuming: the I/O thread only moves messages and acks;
    the handler runs on a worker thread so heartbeats keep flowing during long work."""

    def __init__(
        self, broker: RabbitBroker, queue_name: str, handler: Handler, stop: threading.Event
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.handler = handler
        self.stop = stop
        self.busy = threading.Event()
        self.worker: threading.Thread | None = None
        self.consuming = False

    def wait_idle(self) -> None:
        """Block until the handler thread (if any) has returned."""
        if self.worker is not None:
            self.worker.join()

    def run(self) -> None:
        conn = self.broker._connect()
        try:
            channel = conn.channel()
            declare_topology(channel, self.broker.topology)
            channel.basic_qos(prefetch_count=1)
            consumer_tag = channel.basic_consume(
                self.queue_name, partial(self._on_message, conn), auto_ack=False
            )
            self.consuming = True
            log.info("event=consuming queue=%s", self.queue_name)
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.25)
            channel.basic_cancel(consumer_tag)  # take no new work; finish the current one
            while self.busy.is_set():
                conn.process_data_events(time_limit=0.25)
        finally:
            if conn.is_open:
                conn.close()

    def _on_message(
        self,
        conn: pika.BlockingConnection,
        channel: BlockingChannel,
        method: Any,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        headers = dict(props.headers or {})
        delivered = Delivered(
            body=body,
            message_id=props.message_id or "",
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
            delivery_count=int(headers.get("x-delivery-count", 0) or 0),
            headers=headers,
        )
        self.busy.set()
        self.worker = threading.Thread(
            target=self._work,
            args=(conn, channel, method.delivery_tag, delivered),
            name="noduleflow-handler",
            daemon=True,
        )
        self.worker.start()

    def _work(
        self,
        conn: pika.BlockingConnection,
        channel: BlockingChannel,
        tag: int,
        delivered: Delivered,
    ) -> None:
        try:
            verdict = self.handler(delivered)
        except Exception:
            log.exception("event=handler_crashed queue=%s", self.queue_name)
            verdict = Verdict.RETRY
        if verdict is Verdict.RETRY:
            self.stop.wait(self.broker.retry_delay)
        try:
            conn.add_callback_threadsafe(partial(self._settle, channel, tag, verdict))
        except Exception:
            log.warning("event=settle_lost queue=%s tag=%s", self.queue_name, tag)
            self.busy.clear()

    def _settle(self, channel: BlockingChannel, tag: int, verdict: Verdict) -> None:
        try:
            if not channel.is_open:
                return  # never settle a tag of a dead channel; the message is redelivered
            if verdict is Verdict.ACK:
                channel.basic_ack(tag)
            elif verdict is Verdict.RETRY:
                channel.basic_nack(tag, requeue=True)
            else:
                channel.basic_reject(tag, requeue=False)
        finally:
            self.busy.clear()


def make_broker(url: str, prefix: str = "noduleflow") -> Broker:
    """RabbitMQ when ``url`` is set, else the in-process broker."""
    topology = Topology(prefix=prefix)
    if url:
        return RabbitBroker(url, topology)
    return InProcessBroker(topology)
