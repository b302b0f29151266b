"""highdicom's tables of the DICOM standard, loaded when the reporter starts.

highdicom reads its tables of IODs, modules and attributes (some 3 MB of JSON) the first time
it builds an instance, and keeps them for the life of the process: the first study's report
waited for that (0.2 s of CPU on a quiet machine, more on a busy one). :func:`preload` reads
them at start instead. The loaders are highdicom's own cached functions; a version without
them only loses the head start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

LOADERS = ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")


def preload() -> int:
    """Load highdicom's standard tables now; returns how many were found to load."""
    try:
        from highdicom import _standard_utils as standard
    except ImportError:  # pragma: no cover - highdicom is a dependency
        return 0
    loaded = 0
    for name in LOADERS:
        loader: Callable[[], Any] | None = getattr(standard, name, None)
        if callable(loader):
            loader()
            loaded += 1
    if loaded < len(LOADERS):  # another highdicom: the first report loads what it needs
        log.info("event=dicom_tables_not_all_preloaded loaded=%d of=%d", loaded, len(LOADERS))
    return loaded
