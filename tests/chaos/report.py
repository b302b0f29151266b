"""The chaos suite's table: faults injected against invariants held (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tests.chaos.invariants import Check
from tests.chaos.schedule import Fault, Kind


@dataclass(frozen=True)
class Injected:
    fault: Fault
    effect: str  # what it did, e.g. "pid 1234", "7 links reset", "183 MB ballast"


def _rows(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), line, *(fmt.format(*map(str, r)) for r in rows)]


def render(
    *,
    seed: int,
    header: str,
    injected: Sequence[Injected],
    checks: Sequence[Check],
    notes: Sequence[str] = (),
    max_problems: int = 5,
) -> str:
    counts = Counter(i.fault.kind for i in injected)
    out = [f"chaos seed={seed}: {header}", ""]
    fault_rows = [(kind.value, str(counts.get(kind, 0))) for kind in Kind]
    fault_rows.append(("total", str(len(injected))))
    out += _rows(("fault", "injected"), fault_rows)
    out.append("")
    out += _rows(
        ("invariant", "held", "measured"),
        [(c.name, "yes" if c.held else "NO", c.measured) for c in checks],
    )
    for check in checks:
        for problem in check.problems[:max_problems]:
            out.append(f"  {check.name}: {problem}")
        if len(check.problems) > max_problems:
            out.append(f"  {check.name}: … and {len(check.problems) - max_problems} more")
    out += ["", *notes]
    return "\n".join(out).rstrip() + "\n"


def timeline(injected: Sequence[Injected]) -> str:
    return "\n".join(f"  {i.fault.describe()}: {i.effect}" for i in injected)
