"""The seeded fault schedule: which fault, on what, when and for how long (pure).

The same seed, count and span give the same schedule, so a failing run can be replayed
with ``--seed``. Faults are spread over the span one per slot (a slot is ``span / count``
seconds, each fault starts at a random point in the first half of its slot), so two
outages of the same resource never overlap. Every kind appears at least once when there
are at least as many faults as kinds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    KILL_WORKER = "kill worker"
    KILL_REPORTER = "kill reporter"
    KILL_RECEIVER = "kill receiver"
    CUT_BROKER = "cut broker"
    CUT_DATABASE = "cut database"
    FILL_DISK = "fill disk"

    @property
    def outage(self) -> bool:
        """A fault that lasts (and is undone after ``duration``) rather than a kill."""
        return self in (Kind.CUT_BROKER, Kind.CUT_DATABASE, Kind.FILL_DISK)


#: How often each kind is drawn after every kind has appeared once.
WEIGHTS = {
    Kind.KILL_WORKER: 3,
    Kind.KILL_REPORTER: 2,
    Kind.KILL_RECEIVER: 3,
    Kind.CUT_BROKER: 2,
    Kind.CUT_DATABASE: 2,
    Kind.FILL_DISK: 2,
}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the schedule starts
    kind: Kind
    target: int  # which replica (worker or receiver index); 0 for the others
    duration: float  # outage length; for a kill, the delay before the restart

    def describe(self) -> str:
        what = f"{self.kind.value} {self.target}" if self.kind in REPLICATED else self.kind.value
        verb = "for" if self.kind.outage else "restart after"
        return f"t={self.at:6.1f}s {what} ({verb} {self.duration:.1f}s)"


REPLICATED = (Kind.KILL_WORKER, Kind.KILL_RECEIVER)


def make_schedule(
    seed: int, count: int, span: float, *, workers: int = 2, receivers: int = 2
) -> list[Fault]:
    """``count`` faults over ``span`` seconds, in time order; see the module docstring."""
    if count < 1 or span <= 0:
        raise ValueError(f"need at least one fault over a positive span, got {count}, {span}")
    rng = random.Random(seed)
    kinds = list(Kind)[: min(count, len(Kind))]
    kinds += rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=count - len(kinds))
    rng.shuffle(kinds)
    slot = span / count
    faults = []
    for i, kind in enumerate(kinds):
        at = i * slot + rng.uniform(0, slot / 2)
        if kind.outage:
            duration = rng.uniform(min(2.0, slot / 2), max(min(8.0, slot * 0.45), slot / 2))
        else:
            duration = rng.uniform(0.5, 3.0)
        replicas = workers if kind is Kind.KILL_WORKER else receivers
        target = rng.randrange(replicas) if kind in REPLICATED else 0
        faults.append(Fault(round(at, 2), kind, target, round(duration, 2)))
    return faults
