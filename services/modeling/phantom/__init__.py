"""Synthetic chest CT phantoms with lung nodules and exact ground truth.

The generator lives in :mod:`services.modeling.phantom.generate` (``generate_case``,
``write_case``, ``write_phantom``, ``draw_settings``); the other modules are its parts: body
habitus, scanner parameters and the domains ``v1``/``wide``/``shifted`` (``params``), the
wider domains' extras (``world``), body shapes (``shapes``, ``segments``), anatomy rendering
(``anatomy``, ``raster``), vessel and airway trees (``trees``, ``tubes``), nodules and masses
(``nodules``, ``placement``), benign look-alikes (``mimics``), metal and motion artefacts
(``artefacts``), the scanner model (``scanner``, ``kernels``), ground truth (``truth``) and
the DICOM writer (``dicom``).
"""

from services.modeling.phantom.generate import (
    NoduleTruth,
    PhantomCase,
    PhantomResult,
    Settings,
    draw_settings,
    generate_case,
    write_case,
    write_phantom,
)

__all__ = [
    "NoduleTruth",
    "PhantomCase",
    "PhantomResult",
    "Settings",
    "draw_settings",
    "generate_case",
    "write_case",
    "write_phantom",
]
