"""The worker's seam to the analysis pipeline, typed by the pipeline's own Protocol.

The worker holds a :class:`~services.analysis.pipeline.ProbabilityModel` (the loaded engine)
and calls an :class:`Analyze` (``analysis.pipeline.analyze_files`` in production, a fake in
tests). Errors cross typed: the pipeline's ``AnalysisError`` is a ``PermanentError`` and
becomes ``StudyUnusable``; a runtime's out-of-memory failure becomes ``ResourceExhausted``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from services.core.errors import ResourceExhausted
from services.worker.policy import StudyUnusable

if TYPE_CHECKING:
    from services.analysis.pipeline import AnalysisResult, ProbabilityModel

#: ``progress(stage, fraction)``
Progress = Callable[[str, float], None]

# ONNX Runtime and CUDA report allocation failures as a plain RuntimeError; these are the
# phrases they use. Only errors raised by the model runtime are looked at, here, once.
_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "bad_alloc")


class Analyze(Protocol):
    """``(paths, engine, *, progress) -> AnalysisResult``, as ``analyze_files``."""

    def __call__(
        self,
        paths: Sequence[Path],
        engine: ProbabilityModel,
        *,
        progress: Progress | None = None,
    ) -> AnalysisResult: ...


def out_of_memory(error: RuntimeError) -> bool:
    """Whether a model runtime's RuntimeError reports memory exhaustion."""
    text = str(error).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def default_analyze(
    paths: Sequence[Path], engine: ProbabilityModel, *, progress: Progress | None = None
) -> AnalysisResult:
    """``analysis.pipeline.analyze_files`` with its errors typed for the job policy."""
    from services.analysis.errors import AnalysisError
    from services.analysis.pipeline import analyze_files

    try:
        return analyze_files(list(paths), engine, progress=progress)
    except AnalysisError as exc:
        raise StudyUnusable(exc.code, exc.message, skip=exc.skip) from exc
    except RuntimeError as exc:
        if out_of_memory(exc):
            raise ResourceExhausted(f"model runtime: {exc}"[:300]) from exc
        raise
