"""Reporter cost on a realistic series: artefact building and C-STORE delivery.

Run: ``.venv/bin/python tests/perf/bench_reporter.py [--slices 300] [--size 512]
[--nodules 4] [--repeat 3]``

Writes a synthetic CT series (slices × size², int16) with spherical nodules into local
storage and the job rows the worker leaves, then measures (best of ``--repeat``):
  * the anchor: reading the whole series' pixels with pydicom (FACTS.md: 0.36–0.43 s for
    300 × 512² on these machines),
  * loading the job's inputs (300 headers, sanitised), SEG, key images and SR building,
  * the whole ``study.result`` handling (build + write + rows + commit),
  * sending the artefacts to a real Orthanc by C-STORE (when Orthanc is installed).
Prints each figure and its ratio to the anchor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def best(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--nodules", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from pydicom import dcmread
    from sqlalchemy import update

    from services.core.broker import Delivered
    from services.core.db import Database, Job
    from services.core.messages import STUDY_RESULT, StudyResult
    from services.core.settings import Settings
    from services.core.storage import LocalStorage
    from services.reporter.dicom.artefacts import write_artefacts
    from services.reporter.dicom.inputs import load_inputs
    from services.reporter.dicom.keyimage import build_key_image
    from services.reporter.dicom.seg import build_seg
    from services.reporter.dicom.sr import build_sr
    from services.reporter.results import ResultConsumer
    from tests.factories.reporting import Sphere, nodule_series, seed_reporting_job

    work = Path(tempfile.mkdtemp(prefix="nf-bench-reporter-"))
    settings = Settings(
        database_url=f"sqlite:///{work / 'nf.db'}",
        storage_dir=work / "storage",
        outbox_dir=work / "outbox",
    )
    db = Database(settings.database_url)
    db.upgrade()
    n, size = args.slices, args.size
    spheres = [
        Sphere(
            (n * (i + 1) // (args.nodules + 1), size // 3 + 40 * i, size // 2 - 30 * i),
            3.0 + 2.0 * i,
        )
        for i in range(args.nodules)
    ]
    started = time.perf_counter()
    series = nodule_series(n_slices=n, rows=size, cols=size, spheres=spheres)
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    print(
        f"setup: {n} slices {size}x{size}, {args.nodules} nodules, "
        f"{time.perf_counter() - started:.1f} s"
    )
    paths = list(series.paths)
    del series

    anchor = best(args.repeat, lambda: [dcmread(p).pixel_array for p in paths])
    storage = LocalStorage(settings.storage_dir)

    def inputs():  # type: ignore[no-untyped-def]
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return load_inputs(session, storage, job)

    loaded = inputs()
    t_load = best(args.repeat, inputs)
    t_seg = best(
        args.repeat,
        lambda: build_seg(
            source_images=loaded.headers,
            findings=loaded.findings,
            algorithm=loaded.algorithm,
            uids=loaded.uids,
        ),
    )

    def keys() -> None:
        for f in loaded.findings:
            k = f.largest_slice()
            build_key_image(
                source=loaded.read_slice(k),
                header=loaded.headers[k],
                finding=f,
                algorithm=loaded.algorithm,
                uids=loaded.uids,
            )

    t_keys = best(args.repeat, keys)
    t_sr = best(
        args.repeat,
        lambda: build_sr(
            source_images=loaded.headers,
            findings=loaded.findings,
            algorithm=loaded.algorithm,
            uids=loaded.uids,
            evidence=loaded.evidence,
        ),
    )
    t_write = best(args.repeat, lambda: write_artefacts(settings, loaded))

    consumer = ResultConsumer(db, settings)
    body = (
        StudyResult(
            job_id=job_id,
            study_instance_uid=loaded.study_instance_uid,
            status="done",
            findings=len(loaded.findings),
        )
        .to_json()
        .encode()
    )

    def handle() -> None:
        with db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(state="reporting"))
        consumer.handle(Delivered(body, job_id, STUDY_RESULT, False))

    t_handle = best(args.repeat, handle)
    artefacts = write_artefacts(settings, loaded)
    size_mb = sum(a.path.stat().st_size for a in artefacts) / 1e6

    print(f"anchor  read {n} slices with pydicom (pixels): {anchor * 1000:8.1f} ms")
    for label, value in [
        ("load inputs (headers, sanitise, masks)", t_load),
        (f"build SEG ({len(loaded.findings)} segments)", t_seg),
        (f"build {len(loaded.findings)} key images (read slice + render)", t_keys),
        ("build SR (TID 1500)", t_sr),
        ("write all artefacts (build + fsync)", t_write),
        ("handle study.result end to end", t_handle),
    ]:
        print(f"{label:<52} {value * 1000:8.1f} ms  ratio to anchor {value / anchor:5.2f}")
    print(f"artefacts: {len(artefacts)} files, {size_mb:.2f} MB")
    send_to_orthanc(work, settings, artefacts, anchor, args.repeat)


def send_to_orthanc(work: Path, settings, artefacts, anchor: float, repeat: int) -> None:  # type: ignore[no-untyped-def]
    import shutil

    if shutil.which("Orthanc") is None:
        print("Orthanc not installed: C-STORE delivery not measured")
        return
    from services.reporter.delivery.pacs import PacsAddress, store
    from tests.orthanc import running_orthanc

    with running_orthanc(work / "orthanc") as orthanc:
        address = PacsAddress.parse(orthanc.address)

        def send() -> None:
            for artefact in artefacts:
                outcome = store(artefact.path, address, calling_aet=settings.ae_title)
                assert outcome.ok, outcome

        t_send = best(repeat, send)
        count = orthanc.instance_count()
    print(
        f"{'C-STORE all artefacts to Orthanc (1 assoc each)':<52} {t_send * 1000:8.1f} ms  "
        f"ratio to anchor {t_send / anchor:5.2f}; Orthanc holds {count} instances "
        f"after {repeat} sends of {len(artefacts)} (same UIDs)"
    )


if __name__ == "__main__":
    main()
