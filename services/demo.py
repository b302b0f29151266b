"""``noduleflow demo``: the whole product on one machine, end to end, in a few minutes.

Starts ``serve`` on embedded defaults, sends a generated (or the given) CT study over DICOM
with a progress bar, waits for the job to finish, prints the findings and where the SR, SEG,
key images and FHIR report went.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from services.core.db import Database, Delivery, Finding, Job, JobState, Study
from services.core.logs import setup_logging
from services.core.settings import Settings

DEMO_DIR = Path("var/demo")
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 132)


def _free_port(host: str, preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, preferred))
            return preferred
        except OSError:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


def demo_settings(settings: Settings) -> Settings:
    """Embedded defaults in a fresh ``var/demo`` folder, on free ports."""
    defaults = Settings.model_construct()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    update: dict[str, Any] = {
        "dicom_port": _free_port(settings.dicom_host, settings.dicom_port),
        "api_port": _free_port(settings.api_host, settings.api_port),
        "study_idle_seconds": min(settings.study_idle_seconds, 10.0),
    }
    if settings.database_url == defaults.database_url:
        update["database_url"] = f"sqlite:///{DEMO_DIR / 'noduleflow.db'}"
    if settings.storage_dir == defaults.storage_dir:
        update["storage_dir"] = DEMO_DIR / "storage"
    return settings.model_copy(update=update)


def _phantom(outdir: Path) -> Path:
    from services.modeling.phantom import write_phantom

    with console.status("generating a synthetic chest CT (phantom)…"):
        result = write_phantom(outdir, seed=2026, nodules=3, slices=240, thickness=1.25)
    console.print(f"phantom: {result.n_slices} slices, {len(result.nodules)} nodules → {outdir}")
    return outdir


def _wait_for_job(db: Database, study_uid: str, timeout: float) -> Job | None:
    deadline = time.monotonic() + timeout
    last_state = ""
    with console.status("waiting for the analysis…") as status:
        while time.monotonic() < deadline:
            with db.session() as session:
                job = session.scalars(
                    select(Job)
                    .join(Study)
                    .where(Study.study_instance_uid == study_uid)
                    .order_by(Job.version.desc())
                ).first()
                if job is not None:
                    if job.state != last_state:
                        last_state = job.state
                        status.update(f"job {job.id[:8]}: {job.state}…")
                    deliveries = job.deliveries
                    settled = all(d.state != "pending" for d in deliveries)
                    if JobState(job.state).final and settled:
                        return job
            time.sleep(0.5)
    return None


def _study_uid_of(directory: Path) -> str:
    import pydicom
    from pydicom.errors import InvalidDicomError

    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM: keep looking
        if "StudyInstanceUID" in ds:
            return str(ds.StudyInstanceUID)
    raise SystemExit(f"no DICOM study found in {directory}")


def _print_findings(db: Database, job: Job, truth: Path | None, outbox: Path) -> None:
    with db.session() as session:
        findings = list(session.scalars(select(Finding).where(Finding.job_id == job.id)))
        deliveries = list(session.scalars(select(Delivery).where(Delivery.job_id == job.id)))
    table = Table(title=f"findings (job {job.id[:8]}, {job.state})")
    for column in (
        "#",
        "centre LPS (mm)",
        "diameter",
        "long × short",
        "volume",
        "kind",
        "Lung-RADS",
        "confidence",
    ):
        table.add_column(column)
    for f in sorted(findings, key=lambda f: f.index):
        table.add_row(
            str(f.index),
            f"{f.center_x:.1f}, {f.center_y:.1f}, {f.center_z:.1f}",
            f"{f.diameter_mm:.1f} mm",
            f"{f.long_axis_mm:.1f} × {f.short_axis_mm:.1f} mm",
            f"{f.volume_mm3:.0f} mm³",
            f.kind,
            f.lung_rads,
            f"{f.confidence:.2f}",
        )
    console.print(table)
    if job.reason:
        console.print(f"reason: {job.reason}")
    if truth is not None and truth.exists():
        nodules = json.loads(truth.read_text())["nodules"]
        console.print("truth (from the phantom):")
        for n in nodules:
            c = n["center_mm"]
            where = f"{c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}"
            radius = max(n["diameter_mm"] / 2, 1.5)
            hits = [f for f in findings if math.dist(f.center_mm, c) <= radius]
            found = (
                f"found as #{min(hits, key=lambda f: math.dist(f.center_mm, c)).index}"
                if hits
                else "not found"
            )
            console.print(f"  {n['kind']:>12} {n['diameter_mm']:5.1f} mm at {where}: {found}")
    console.print("results went to:")
    groups: dict[str, list[Delivery]] = {}
    for d in deliveries:
        groups.setdefault(
            d.kind.split("-image")[0] + ("-images" if "-image" in d.kind else ""), []
        ).append(d)
    for kind, rows in sorted(groups.items()):
        states = ", ".join(sorted({r.state for r in rows}))
        paths = sorted({str(outbox / r.path) if r.path else r.target for r in rows})
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(paths[0]).parent}"
        errors = "; ".join(sorted({r.last_error[:80] for r in rows if r.last_error}))
        console.print(f"  {kind:>10}: {states:<8} {where} {errors}")


def run(settings: Settings, directory: Path | None, *, timeout: float = 600.0) -> int:
    from services.commands.scu import send_paths
    from services.serve import running

    settings = demo_settings(settings)
    log_file = DEMO_DIR / "noduleflow.log"
    setup_logging(settings.log_level, log_file=log_file)
    console.print(f"service logs: {log_file}")
    source = directory or _phantom(DEMO_DIR / "phantom")
    study_uid = _study_uid_of(source)
    with running(settings) as node:
        console.print(
            f"noduleflow is listening: DICOM {settings.ae_title}@{settings.dicom_host}:"
            f"{settings.dicom_port}, API {settings.base_url}"
        )
        report = send_paths(
            [source],
            host=settings.dicom_host,
            port=settings.dicom_port,
            aet="DEMO_SCU",
            called_aet=settings.ae_title,
            associations=1,
            progress=True,
        )
        console.print(report.summary())
        if not report.ok:
            return 1
        job = _wait_for_job(node.db, study_uid, timeout)
        if job is None:
            console.print(f"[red]no result within {timeout:.0f} s[/red]")
            return 1
        _print_findings(node.db, job, source / "truth.json", settings.outbox_dir)
        base = settings.base_url
        console.print(f"FHIR report: {base}/fhir/DiagnosticReport/{job.id}")
        console.print(f"study page:  {base}/studies/{study_uid}")
        console.print(f"worklist:    {base}/worklist")
        console.print(f"findings:    {base}/api/studies/{study_uid}/findings")
        console.print(
            "(these stop with the demo; to browse them again: "
            f"NODULEFLOW_DATABASE_URL={settings.database_url} "
            f"NODULEFLOW_STORAGE_DIR={settings.storage_dir} noduleflow serve)"
        )
        return 0 if job.state == JobState.DONE else 1
