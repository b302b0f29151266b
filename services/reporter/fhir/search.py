"""FHIR search parameters: a strict, pure parser (``handling=strict`` by default).

Unknown parameters, unsupported modifiers, malformed values, oversized input and ``_sort``
keys outside the allow-list are refused with 400; ``Prefer: handling=lenient`` ignores unknown
parameters instead. The result is plain data that :mod:`services.reporter.fhir.query` turns
into SQL with bound parameters only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from services.reporter.api.errors import ApiError

ParamType = Literal["reference", "token", "date"]
MAX_COUNT = 100
DEFAULT_COUNT = 20
MAX_OFFSET = 100_000
MAX_VALUE_LENGTH = 256
MAX_VALUES = 20
MAX_PARAMS = 30
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?"
    r"(Z|[+-]\d{2}:\d{2}))?)?)?$"
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
COMMON = {"_count", "_offset", "_sort", "_include", "_format", "_total", "_summary", "_elements"}
SUMMARIES = ("count", "false")
_ELEMENT = re.compile(r"^[a-z][A-Za-z]{0,63}$")


@dataclass(frozen=True)
class Reference:
    resource_type: str | None
    id: str


@dataclass(frozen=True)
class Token:
    system: str | None  # None: any system; "": no system
    code: str


@dataclass(frozen=True)
class DateRange:
    prefix: str
    lo: datetime  # inclusive
    hi: datetime  # exclusive


Value = Reference | Token | DateRange


@dataclass(frozen=True)
class Spec:
    """What one resource type accepts: parameter → (type, allowed modifiers)."""

    params: dict[str, tuple[ParamType, frozenset[str]]]
    sorts: dict[str, str]  # _sort key → column name known to the query layer
    includes: frozenset[str] = frozenset()
    # other spellings of a parameter, e.g. ``subject:Patient.identifier`` → ``patient.identifier``
    aliases: dict[str, str] = field(default_factory=dict)
    # top-level element names ``_elements`` may name (empty: ``_elements`` refused)
    elements: frozenset[str] = frozenset()


@dataclass
class Search:
    resource_type: str
    # (name, modifier) → AND-list of OR-lists
    filters: dict[tuple[str, str], list[list[Value]]] = field(default_factory=dict)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    include: list[str] = field(default_factory=list)
    summary: str = "false"  # "count": the total only, no entries
    elements: list[str] = field(default_factory=list)  # _elements: the elements to return
    names: list[str] = field(default_factory=list)  # the accepted raw names, for links/audit
    raw: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str, modifier: str = "") -> list[list[Value]]:
        return self.filters.get((name, modifier), [])


def _bad(message: str) -> ApiError:
    return ApiError(400, message, code="invalid")


def parse(
    resource_type: str, spec: Spec, items: list[tuple[str, str]], *, lenient: bool = False
) -> Search:
    """Validate ``items`` (query pairs in order) against ``spec``."""
    if len(items) > MAX_PARAMS:
        raise _bad(f"Too many search parameters (at most {MAX_PARAMS})")
    search = Search(resource_type=resource_type)
    for raw_name, value in items:
        if len(raw_name) > 64 or len(value) > MAX_VALUE_LENGTH * 4:
            raise _bad("Search parameter name or value too long")
        if any(ord(ch) < 32 for ch in value):
            raise _bad(f"Control characters in parameter {raw_name[:40]!r}")
        name, _, modifier = spec.aliases.get(raw_name, raw_name).partition(":")
        if name in COMMON:
            _common(search, spec, name, value)
        elif name in spec.params and modifier in spec.params[name][1]:
            kind = spec.params[name][0]
            ors = [_value(kind, name, v) for v in _split(value)]
            search.filters.setdefault((name, modifier), []).append(ors)
        elif lenient:
            continue
        elif name in spec.params:
            raise _bad(f"Modifier {modifier[:40]!r} is not supported for {name}")
        else:
            raise _bad(
                f"Unknown or unsupported search parameter {raw_name[:40]!r} for {resource_type}"
            )
        search.names.append(raw_name)
        search.raw.append((raw_name, value))
    if search.summary == "count":  # the total only, as _count=0
        search.count = 0
    return search


def _split(value: str) -> list[str]:
    parts = [p for p in re.split(r"(?<!\\),", value)]
    if len(parts) > MAX_VALUES:
        raise _bad(f"Too many values (at most {MAX_VALUES})")
    if any(not p or len(p) > MAX_VALUE_LENGTH for p in parts):
        raise _bad("Empty or too long search value")
    return [p.replace("\\,", ",") for p in parts]


def _int(name: str, value: str, low: int, high: int | None = None) -> int:
    if not re.fullmatch(r"\d{1,9}", value):
        raise _bad(f"{name} must be a non-negative integer")
    number = int(value)
    if number < low:
        raise _bad(f"{name} must be at least {low}")
    return min(number, high) if high is not None else number


def _common(search: Search, spec: Spec, name: str, value: str) -> None:
    if name == "_count":
        search.count = _int(name, value, 0, MAX_COUNT)
    elif name == "_offset":
        search.offset = _int(name, value, 0)
        if search.offset > MAX_OFFSET:
            raise _bad(f"_offset beyond {MAX_OFFSET}; narrow the search")
    elif name == "_sort":
        search.sort = []
        for key in _split(value):
            descending = key.startswith("-")
            column = spec.sorts.get(key.removeprefix("-"))
            if column is None:
                raise _bad(f"_sort key not supported; allowed: {', '.join(sorted(spec.sorts))}")
            search.sort.append((column, descending))
    elif name == "_include":
        if value not in spec.includes:
            raise _bad(f"_include not supported; allowed: {', '.join(sorted(spec.includes))}")
        search.include.append(value)
    elif name == "_format":
        if value not in ("json", "application/json", "application/fhir+json"):
            raise ApiError(406, "Only JSON is supported", code="not-supported")
    elif name == "_total" and value not in ("accurate", "estimate", "none"):
        raise _bad("_total must be none, estimate or accurate")
    elif name == "_summary":
        if value not in SUMMARIES:
            raise _bad(f"_summary not supported; allowed: {', '.join(SUMMARIES)}")
        search.summary = value
    elif name == "_elements":
        for element in _split(value):
            if not _ELEMENT.match(element) or element not in spec.elements:
                allowed = ", ".join(sorted(spec.elements)) or "none"
                raise _bad(f"_elements: unknown element {element[:40]!r}; allowed: {allowed}")
            search.elements.append(element)


def _value(kind: ParamType, name: str, value: str) -> Value:
    if kind == "reference":
        return parse_reference(name, value)
    if kind == "token":
        system, sep, code = value.rpartition("|")
        if not code:
            raise _bad(f"{name}: empty code")
        return Token(system=system if sep else None, code=code)
    return parse_date(name, value)


def parse_reference(name: str, value: str) -> Reference:
    tail = value.rstrip("/").split("/")
    rtype, rid = (tail[-2], tail[-1]) if len(tail) >= 2 else (None, tail[-1])
    bad_type = rtype is not None and not re.fullmatch(r"[A-Z][A-Za-z]{1,40}", rtype)
    if not _ID.match(rid) or bad_type:
        raise _bad(f"{name}: not a valid reference (expected [Type/]id)")
    return Reference(resource_type=rtype, id=rid)


def parse_date(name: str, value: str) -> DateRange:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    match = _DATE.match(text)
    if not match:
        raise _bad(f"{name}: not a FHIR date or dateTime")
    year, month, day, hour, _minute, second, zone = match.groups()
    try:
        if hour is not None:
            lo = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
            hi = lo + _precision(text, seconds=second is not None)
        elif day is not None:
            lo = datetime(int(year), int(month), int(day), tzinfo=UTC)
            hi = lo + timedelta(days=1)
        elif month is not None:
            lo = datetime(int(year), int(month), 1, tzinfo=UTC)
            hi = datetime(int(year) + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=UTC)
        else:
            lo = datetime(int(year), 1, 1, tzinfo=UTC)
            hi = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    except ValueError as exc:
        raise _bad(f"{name}: not a valid date") from exc
    del zone
    return DateRange(prefix=prefix, lo=lo, hi=hi)


def _precision(text: str, *, seconds: bool) -> timedelta:
    """The range a dateTime with a time covers: its last digit (so ``gt<instant>`` with
    milliseconds, as a ``_lastUpdated`` poll sends, misses nothing after that instant)."""
    fraction = re.search(r"\.(\d+)", text)
    if fraction:
        return timedelta(microseconds=10 ** max(6 - len(fraction.group(1)), 0))
    return timedelta(seconds=1) if seconds else timedelta(minutes=1)
