"""The worker's view of the analysis pipeline: permanent errors become ``StudyUnusable``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.worker.policy import StudyUnusable

# (paths, engine, *, progress(stage, fraction)) -> AnalysisResult
Analyze = Callable[..., Any]


def default_analyze(paths: Sequence[Path], engine: Any, *, progress: Any = None) -> Any:
    """``analysis.pipeline.analyze_files`` with its ``AnalysisError`` mapped."""
    from services.analysis.errors import AnalysisError
    from services.analysis.pipeline import analyze_files

    try:
        return analyze_files(list(paths), engine, progress=progress)
    except AnalysisError as exc:
        raise StudyUnusable(exc.code, exc.message, skip=exc.skip) from exc
