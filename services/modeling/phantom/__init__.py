"""Synthetic chest CT phantoms with lung nodules and exact ground truth.

The generator lives in :mod:`services.modeling.phantom.generate` (``generate_case``,
``write_case``, ``write_phantom``); the other modules are its parts: body habitus and scanner
parameters (``params``), body shapes (``shapes``, ``segments``), anatomy rendering
(``anatomy``, ``raster``), vessel and airway trees (``trees``, ``tubes``), nodules
(``nodules``, ``placement``), the scanner model (``scanner``), ground truth (``truth``) and
the DICOM writer (``dicom``).
"""

from services.modeling.phantom.generate import (
    NoduleTruth,
    PhantomCase,
    PhantomResult,
    generate_case,
    write_case,
    write_phantom,
)

__all__ = [
    "NoduleTruth",
    "PhantomCase",
    "PhantomResult",
    "generate_case",
    "write_case",
    "write_phantom",
]
