"""Replacing attributes of pynetdicom's modules and classes, and putting them back.

A :class:`Patch` names one attribute and what replaces it; :func:`apply` records the value
it replaces (:class:`Replaced`) and :func:`restore` puts every recorded value back, so the
originals are exactly the objects that were there before (same identity, descriptors
included: the value is read from the owner's own namespace, not through ``getattr``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Patch:
    """``owner.name = replacement``, where ``owner`` is a module or a class."""

    owner: Any
    name: str
    replacement: Any

    @property
    def target(self) -> str:
        """Dotted name of the patched attribute, e.g. ``pynetdicom.dul.time``."""
        owner = self.owner
        if isinstance(owner, type):
            return f"{owner.__module__}.{owner.__qualname__}.{self.name}"
        return f"{getattr(owner, '__name__', type(owner).__name__)}.{self.name}"


@dataclass(frozen=True)
class Replaced:
    """A patch that was applied, with the value it replaced."""

    patch: Patch
    original: Any

    @property
    def target(self) -> str:
        return self.patch.target


def apply(patches: Iterable[Patch]) -> list[Replaced]:
    """Apply ``patches`` in order; all or nothing. Each target must exist in its owner's own
    namespace (an attribute pynetdicom no longer defines there is an error, not a no-op)."""
    done: list[Replaced] = []
    try:
        for patch in patches:
            namespace = vars(patch.owner)
            if patch.name not in namespace:
                raise LookupError(f"{patch.target} does not exist: nothing to replace")
            done.append(Replaced(patch, namespace[patch.name]))
            setattr(patch.owner, patch.name, patch.replacement)
    except BaseException:
        restore(done)
        raise
    return done


def restore(replaced: Sequence[Replaced]) -> None:
    """Put back the originals recorded by :func:`apply`, last applied first."""
    for item in reversed(replaced):
        setattr(item.patch.owner, item.patch.name, item.original)
