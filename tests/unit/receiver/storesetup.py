"""What the store tests share: data sets, the received form of one, and a store on a fresh
database with the helpers that read back what it did."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from services.core import audit
from services.core.db import AuditEvent, Database, Instance, Series, Study
from services.core.storage import LocalStorage
from services.receiver.index import parse_header
from services.receiver.store import CONFLICTS, QUARANTINE, InstanceStore, Outcome, Received
from tests.factories.dicom import ct_slice

STUDY_A, SERIES_A = "1.2.826.0.1.3680043.10.77.1", "1.2.826.0.1.3680043.10.77.1.1"
STUDY_B, SERIES_B = "1.2.826.0.1.3680043.10.77.2", "1.2.826.0.1.3680043.10.77.2.1"


def make_slice(study: str, series: str, index: int, sop: str, **attrs: Any) -> Dataset:
    ds = ct_slice(study_uid=study, series_uid=series, index=index, sop_uid=sop)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def received_of(storage: LocalStorage, ds: Dataset, *, aet: str = "MODALITY") -> Received:
    temp = storage.temp_path()
    ds.save_as(temp, enforce_file_format=True)
    data = temp.read_bytes()
    return Received(
        temp,
        len(data),
        hashlib.sha256(data).hexdigest(),
        aet,
        parse_header(temp),
        peer="10.0.0.9:4242",
    )


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Setup:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        self.storage = LocalStorage(root)
        self.store = InstanceStore(db, self.storage, min_free_bytes=0)

    def send(
        self, ds: Dataset, store: InstanceStore | None = None, *, opens: bool = True
    ) -> Outcome:
        return (store or self.store).store(received_of(self.storage, ds), opens_study=opens)

    def study_a(self, n: int = 4) -> list[str]:
        sops = [str(generate_uid()) for _ in range(n)]
        for i, sop in enumerate(sops):
            assert self.send(make_slice(STUDY_A, SERIES_A, i, sop)) is Outcome.STORED
        return sops

    def rows(self) -> dict[str, tuple[str, str, str, str]]:
        """sop -> (study, series, path, sha256)."""
        with self.db.session() as session:
            result = session.execute(
                select(
                    Instance.sop_instance_uid,
                    Study.study_instance_uid,
                    Series.series_instance_uid,
                    Instance.path,
                    Instance.sha256,
                )
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
            ).all()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in result}

    def files(self) -> dict[str, str]:
        """Every stored file (outside quarantine and temporary folders) -> sha256."""
        return {
            str(p.relative_to(self.root)): sha_of(p)
            for p in sorted(self.root.rglob("*.dcm"))
            if not p.relative_to(self.root).parts[0].startswith(".")
        }

    def quarantined(self) -> list[Path]:
        return sorted((self.root / QUARANTINE / CONFLICTS).rglob("*.dcm"))

    def study(self, uid: str) -> Study | None:
        with self.db.session() as session:
            return session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()

    def alerts(self) -> list[AuditEvent]:
        with self.db.session() as session:
            return list(
                session.scalars(select(AuditEvent).where(AuditEvent.event == audit.SECURITY_ALERT))
            )


class Interleaved(InstanceStore):
    """Lets ``sibling`` run after this store read the index and before it writes."""

    sibling: Any = None

    def _place_new(self, *args: Any, **kw: Any) -> bool:
        if self.sibling is not None:
            sibling, self.sibling = self.sibling, None
            sibling()
        return super()._place_new(*args, **kw)
