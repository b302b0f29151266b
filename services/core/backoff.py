"""The one capped exponential backoff: job retries, delivery retries and the polling loops
(outbox relay, study tracker, broker consumer) all wait ``first * factor**(n-1)``, capped."""

from __future__ import annotations

#: exponents beyond this are capped anyway; keeps ``factor**n`` from overflowing a float
_MAX_EXPONENT = 64


def capped_exponential(attempt: int, *, first: float, cap: float, factor: float = 2.0) -> float:
    """Seconds to wait after failure number ``attempt`` (1-based; ``attempt <= 1`` → ``first``)."""
    exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
    return float(min(cap, first * factor**exponent))


class Backoff:
    """Consecutive failures of a loop: :meth:`failed` gives the next wait, :meth:`reset`
    starts afresh after a success. Not thread-safe (one loop owns one)."""

    def __init__(self, first: float, cap: float, factor: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.factor = factor
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return capped_exponential(self.failures, first=self.first, cap=self.cap, factor=self.factor)

    def reset(self) -> None:
        self.failures = 0
