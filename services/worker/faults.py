"""Fault injection at named points of a job, for crash-window tests. Inert unless set.

``NODULEFLOW_FAULT_AT`` holds comma-separated rules ``point[:action][:times=N]``:

- ``point``: ``after_claim``, ``mid_infer`` (first progress report of the analysis),
  ``before_commit``, ``after_commit`` (results committed, not yet published or acked),
  ``after_publish`` (published, not yet acked).
- ``action``: ``exit`` (default; ``os._exit(137)`` as if SIGKILLed), ``sleep=SECONDS``,
  ``raise=memory`` (MemoryError), ``raise=db`` (database unavailable), ``raise=storage``.
- ``times=N``: fire at most N times in this process (default: every time).
- ``job=ID``: fire only in the job whose id is ``ID`` (a study that crashes the worker beside
  others that do not).

Example: ``NODULEFLOW_FAULT_AT=after_commit`` or ``NODULEFLOW_FAULT_AT=mid_infer:sleep=30``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError

from services.worker.policy import StorageUnavailable

log = logging.getLogger(__name__)

ENV = "NODULEFLOW_FAULT_AT"
POINTS = ("after_claim", "mid_infer", "before_commit", "after_commit", "after_publish")


@dataclass
class Rule:
    point: str
    action: str = "exit"
    argument: str = ""
    times: int | None = None
    job: str = ""
    fired: int = field(default=0)


def parse(spec: str) -> list[Rule]:
    """Parse ``NODULEFLOW_FAULT_AT``; unknown points or actions raise ValueError."""
    rules = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, *options = item.split(":")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        rule = Rule(point)
        for option in options:
            key, _, value = option.partition("=")
            if key == "times":
                rule.times = int(value)
            elif key == "job":
                rule.job = value
            elif key in ("exit", "sleep", "raise"):
                rule.action, rule.argument = key, value
                if key == "sleep":
                    float(value)
                if key == "raise" and value not in ("memory", "db", "storage"):
                    raise ValueError(f"unknown fault error {value!r}")
            else:
                raise ValueError(f"unknown fault option {option!r}")
        rules.append(rule)
    return rules


class Faults:
    """The parsed rules of one process; ``hit(point)`` does nothing when none match."""

    def __init__(self, spec: str | None = None) -> None:
        self.rules = parse(os.environ.get(ENV, "") if spec is None else spec)
        self._lock = threading.Lock()
        if self.rules:
            log.warning("event=fault_injection_enabled rules=%s", spec or os.environ.get(ENV))

    def hit(self, point: str, job: str = "") -> None:
        for rule in self.rules:
            if rule.point != point or (rule.job and rule.job != job):
                continue
            with self._lock:
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
            self._fire(rule)

    @staticmethod
    def _fire(rule: Rule) -> None:
        log.warning("event=fault_injected point=%s action=%s", rule.point, rule.action)
        if rule.action == "sleep":
            time.sleep(float(rule.argument))
        elif rule.action == "raise":
            if rule.argument == "memory":
                raise MemoryError(f"injected at {rule.point}")
            if rule.argument == "storage":
                raise StorageUnavailable(f"injected at {rule.point}")
            raise OperationalError("injected", {}, ConnectionError(f"injected at {rule.point}"))
        else:
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(137)
