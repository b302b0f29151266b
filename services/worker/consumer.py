"""The worker's threads: one consuming ``noduleflow.inference``, one relaying results.

The broker owns the pika details (I/O thread, handler thread, acks marshalled back with
``add_callback_threadsafe``, reconnects); this module starts and stops them in order:
stop taking work, let the current job finish and settle, then stop the relay.
"""

from __future__ import annotations

import logging
import threading

from services.core.broker import Broker, Handler
from services.core.messages import INFERENCE_QUEUE
from services.core.outbox import Relay

log = logging.getLogger(__name__)


class Worker:
    """A running consumer; ``start()`` returns at once, ``stop()`` drains in order."""

    def __init__(
        self,
        broker: Broker,
        handler: Handler,
        relay: Relay | None,
        *,
        stop: threading.Event | None = None,
        queue: str = INFERENCE_QUEUE,
    ) -> None:
        self.broker = broker
        self.handler = handler
        self.relay = relay
        self.queue = queue
        self.stopping = stop or threading.Event()
        self._relay_stop = threading.Event()
        self._consumer: threading.Thread | None = None
        self._relayer: threading.Thread | None = None

    def start(self) -> None:
        if self._consumer is not None:
            raise RuntimeError("worker already started")
        self._consumer = threading.Thread(
            target=self._consume, name="noduleflow-worker", daemon=True
        )
        self._consumer.start()
        if self.relay is not None:
            self._relayer = threading.Thread(
                target=self.relay.run,
                args=(self._relay_stop,),
                name="noduleflow-worker-relay",
                daemon=True,
            )
            self._relayer.start()
        log.info("event=worker_started queue=%s", self.queue)

    def _consume(self) -> None:
        try:
            self.broker.consume(self.queue, self.handler, self.stopping)
        except Exception:
            log.exception("event=worker_consume_crashed queue=%s", self.queue)
            self.stopping.set()

    @property
    def alive(self) -> bool:
        return self._consumer is not None and self._consumer.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the consumer to end; True when it has."""
        if self._consumer is not None:
            self._consumer.join(timeout)
        return not self.alive

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Take no new work; with ``wait``, let the current job finish, then stop relaying."""
        if not self.stopping.is_set():
            log.info("event=worker_stopping queue=%s", self.queue)
        self.stopping.set()
        if not wait:
            return
        self.join(timeout)
        if self.relay is not None:
            self._relay_stop.set()
            self.relay.wake.set()
            try:
                self.relay.relay_once()  # flush results committed during the drain
            except Exception:
                log.warning("event=worker_final_relay_failed", exc_info=True)
        if self._relayer is not None:
            self._relayer.join(timeout=10)
        log.info("event=worker_stopped queue=%s", self.queue)
