"""No patient name reaches the logs (security.md, section 6), whatever a library prints.

The reporter is run as a process of its own, logging set up by ``setup_logging`` as the
commands do, and builds real reports (SEG, key images, SR) for studies whose names highdicom
and pydicom would quote in their warnings; every byte the process writes is searched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

#: (PatientName, ReferringPhysicianName) as the modality sent them; none has a caret, so
#: highdicom warns 'The string "…" is unlikely to represent the intended person name'.
HOSTILE = [
    ("DOE JOHN", "SMITH ANNA"),
    ("Robert'); DROP TABLE studies;--", "O'BRIEN KATE"),
    ('QUOTE "ZED" NAME', "MULLER-LUDENSCHEIDT HANS"),
]
#: What must not appear anywhere in the output (each name, and a distinctive part of it).
NEEDLES = ["DOE JOHN", "SMITH ANNA", "Robert", "DROP TABLE", "BRIEN", "ZED", "LUDENSCHEIDT"]
NEEDLES += ["JANE ROE"]  # logged by our own code as a PersonName argument

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path

    from pydicom.valuerep import PersonName

    from services.core.broker import Delivered, Verdict
    from services.core.db import Database
    from services.core.logs import setup_logging
    from services.core.messages import STUDY_RESULT, StudyResult
    from services.core.settings import Settings
    from services.reporter.results import ResultConsumer
    from tests.factories.reporting import nodule_series, seed_reporting_job

    root = Path(sys.argv[1])
    names = [tuple(pair.split("|")) for pair in sys.argv[2:]]
    setup_logging("DEBUG", service="reporter")
    settings = Settings(
        database_url=f"sqlite:///{root / 'nf.db'}",
        storage_dir=root / "storage",
        outbox_dir=root / "outbox",
    )
    db = Database(settings.database_url)
    db.upgrade()
    consumer = ResultConsumer(db, settings)
    for patient, referring in names:
        series = nodule_series(patient_name=patient)
        for ds in series.datasets:
            ds.ReferringPhysicianName = referring
        job = seed_reporting_job(db, settings.storage_dir, series)
        body = StudyResult(
            job_id=job, study_instance_uid=series.study_uid, status="done", findings=1
        ).to_json()
        verdict = consumer.handle(Delivered(body.encode(), job, STUDY_RESULT, False))
        assert verdict is Verdict.ACK
    logging.getLogger("services.reporter").warning(
        "event=probe patient=%s", PersonName("JANE ROE")
    )
    print("reports-built", len(list((root / "outbox").rglob("sr.dcm"))))
    """
)


def test_hostile_names_never_reach_the_log(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), *("|".join(pair) for pair in HOSTILE)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"reports-built {len(HOSTILE)}" in result.stdout
    assert "event=report_created" in result.stderr  # the log was written, through logging
    leaked = [needle for needle in NEEDLES if needle.lower() in output.lower()]
    assert leaked == [], output[-4000:]
