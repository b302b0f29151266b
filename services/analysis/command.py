"""``noduleflow analyze DIR [--json]``: run the model on a folder of DICOM files."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from services.analysis.dicom_io import read_headers
from services.analysis.errors import AnalysisError
from services.analysis.lungrads import overall
from services.analysis.pipeline import AnalysisResult, ProbabilityModel, analyze_files
from services.analysis.series import choose_series

if TYPE_CHECKING:
    from services.core.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_UNSUITABLE = 0, 1, 2
_SKIP_NAMES = {"DICOMDIR"}


def folder_files(directory: Path) -> list[Path]:
    """Regular files under ``directory`` (recursively), hidden files and DICOMDIR excluded."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.name.upper() not in _SKIP_NAMES
    )


def load_engine(settings: Settings) -> ProbabilityModel:
    from services.analysis.engine import Engine

    return Engine.load(settings.model_dir, providers=settings.providers)


def render(result: AnalysisResult, console: Console) -> None:
    """A table of findings, most suspicious first, and a one-line summary."""
    table = Table(title=f"{len(result.findings)} finding(s)", box=box.SIMPLE, pad_edge=False)
    for name in ("#", "x, y, z LPS mm", "diam mm", "long×short", "vol mm³", "HU", "kind"):
        table.add_column(name, no_wrap=True)
    table.add_column("conf", justify="right", no_wrap=True)
    table.add_column("Lung-RADS", justify="center", no_wrap=True)
    for n, f in enumerate(result.findings, 1):
        x, y, z = f.center_mm
        table.add_row(
            str(n),
            f"{x:.1f}, {y:.1f}, {z:.1f}",
            f"{f.diameter_mm:.1f}",
            f"{f.long_axis_mm:.1f}×{f.short_axis_mm:.1f}",
            f"{f.volume_mm3:.0f}",
            f"{f.mean_hu:.0f}",
            f.kind,
            f"{f.confidence:.2f}",
            f.lung_rads,
        )
    console.print(table)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    console.print(
        f"Lung-RADS (baseline, highest): {overall(f.lung_rads for f in result.findings)}\n"
        f"series {result.series_uid}: {result.series_reason}\n"
        f"model {result.model['name']} {result.model['version']} on {result.provider}; {timing}"
    )


def analyze_folder(directory: Path, *, settings: Settings, as_json: bool) -> int:
    """Analyse one folder; prints findings (a table, or ``{"findings": [...]}``).

    Exit status: 0 analysed (with or without findings), 2 not a usable chest CT (or no such
    folder), 1 broken data or an unusable model. Errors are one line on stderr.
    """
    err = Console(stderr=True)
    directory = Path(directory)
    if not directory.is_dir():
        err.print(f"error: {directory} is not a folder")
        return EXIT_UNSUITABLE
    files = folder_files(directory)
    if not files:
        err.print(f"error: no files in {directory}")
        return EXIT_UNSUITABLE
    try:
        # Headers first: a folder that is no usable chest CT is told so before the model loads.
        headers, _ = read_headers(files)
        if not headers:
            raise AnalysisError("not-dicom", f"none of the {len(files)} files is a DICOM image")
        choose_series(headers)
    except AnalysisError as exc:
        err.print(f"error: {exc.code}: {exc.message}", markup=False, highlight=False)
        return EXIT_UNSUITABLE if exc.skip else EXIT_FAILED
    try:
        engine = load_engine(settings)
    except Exception as exc:  # ModelError and ORT start-up failures alike
        err.print(f"error: model: {exc}", markup=False, highlight=False)
        return EXIT_FAILED
    try:
        if as_json:
            result = analyze_files(files, engine)
        else:
            with err.status("analysing…") as status:

                def progress(stage: str, fraction: float) -> None:
                    status.update(f"{stage} {fraction:4.0%}")

                result = analyze_files(files, engine, progress=progress)
    except AnalysisError as exc:
        err.print(f"error: {exc.code}: {exc.message}", markup=False, highlight=False)
        return EXIT_UNSUITABLE if exc.skip else EXIT_FAILED
    if as_json:
        sys.stdout.write(json.dumps({"findings": [f.to_dict() for f in result.findings]}) + "\n")
    else:
        out = Console()
        render(result, out if out.is_terminal and out.width >= 110 else Console(width=110))
    return EXIT_OK
