"""The worker's threads: ``concurrency`` consuming ``noduleflow.inference``, one relaying
results.

Each consumer takes one message at a time (on RabbitMQ its own connection, prefetch 1), so a
process holds at most ``concurrency`` jobs; they share the handler and its model session.
Two jobs at once keep both cores of a small machine busy while either is in a single-threaded
stage (reading, the lung mask, measuring), or the CPU busy while a GPU runs the other.
The broker owns the pika details (I/O thread, handler thread, acks marshalled back with
``add_callback_threadsafe``, reconnects); this module starts and stops them in order:
stop taking work, let the jobs in hand finish and settle, then stop the relay.
"""

from __future__ import annotations

import logging
import threading

from services.core.broker import Broker, Handler
from services.core.messages import INFERENCE_QUEUE
from services.core.outbox import Relay
from services.core.threads import ThreadGroup

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
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.broker = broker
        self.handler = handler
        self.relay = relay
        self.queue = queue
        self.concurrency = concurrency
        # Two groups, stopped in order: the consumers first (the jobs in hand finish and are
        # settled), then the relay (after one last flush of what the drain committed).
        self._consuming = ThreadGroup(stop)
        self._relaying = ThreadGroup()
        self.stopping = self._consuming.stop_event
        self._started = False

    def start(self) -> None:
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        for number in range(1, self.concurrency + 1):
            self._consuming.spawn(f"noduleflow-worker-{number}", self._consume)
        if self.relay is not None:
            self._relaying.on_stop(self.relay.wake.set)
            self._relaying.spawn(
                "noduleflow-worker-relay", self.relay.run, self._relaying.stop_event
            )
        log.info("event=worker_started queue=%s concurrency=%d", self.queue, self.concurrency)

    def _consume(self) -> None:
        try:
            self.broker.consume(self.queue, self.handler, self.stopping)
        except Exception:
            log.exception("event=worker_consume_crashed queue=%s", self.queue)
            self.stopping.set()

    @property
    def alive(self) -> bool:
        return self._consuming.alive

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the consumer to end; True when it has."""
        return self._consuming.join(timeout)

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Take no new work; with ``wait``, let the jobs in hand finish, then stop relaying."""
        if not self.stopping.is_set():
            log.info("event=worker_stopping queue=%s", self.queue)
        self._consuming.stop(wait=False)
        if not wait:
            return
        self.join(timeout)
        if self.relay is not None:
            self._relaying.stop(wait=False)
            try:
                self.relay.relay_once()  # flush results committed during the drain
            except Exception:
                log.warning("event=worker_final_relay_failed", exc_info=True)
        self._relaying.stop(timeout=10)
        log.info("event=worker_stopped queue=%s", self.queue)
