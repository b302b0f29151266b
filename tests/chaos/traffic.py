"""The studies the chaos suite sends, and the sending PACS that keeps score.

Each study is a small synthetic chest CT (two solid nodules) under new UIDs and a hostile
patient: a name without a caret (libraries quote it in warnings), with quotes, SQL, a
format string or non-ASCII letters, each carrying a tag (``QZ…``) that appears nowhere
else, so a log line that contains it came from a patient field.

:class:`Sender` behaves like a PACS with a retry queue: studies go out over several
associations at once, to one receiver or (every ``split_every``-th study) in two halves to
both at the same time; files that were not answered with success or warning are sent
again after a pause, to the other receiver, until the deadline. Only files answered
0x0000/0xB… count as acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from services.commands.scu import send_paths

log = logging.getLogger("chaos.traffic")

#: Patient name templates (``{tag}`` is the study's tag).
NAME_TEMPLATES = (
    "DOE{tag} JOHN",
    "Robert{tag}'); DROP TABLE studies;--",
    'QUOTE "{tag}" NAME',
    "MÜLLER{tag}^JÖRG",
    "O'BRIEN{tag}^KATE",
    "{tag}%s%n^FORMAT",
)


def tag_for(index: int) -> str:
    """``QZ`` and three letters from ``index``: upper case, so never inside a UID or hex id."""
    letters = ""
    for _ in range(3):
        index, digit = divmod(index, 26)
        letters += chr(ord("A") + digit)
    return f"QZ{letters}"


@dataclass(frozen=True)
class Patient:
    tag: str
    name: str
    patient_id: str
    referring: str

    @property
    def needles(self) -> tuple[str, ...]:
        """What must not appear in any log: the tag (in name, ID and referrer) and the name."""
        return (self.tag, self.name)


def patient_for(index: int) -> Patient:
    tag = tag_for(index)
    template = NAME_TEMPLATES[index % len(NAME_TEMPLATES)]
    return Patient(tag, template.format(tag=tag), f"MRN{tag}", f"DR {tag} WHO")


@dataclass
class Study:
    index: int
    patient: Patient
    study_uid: str
    files: list[Path]
    sop_uids: dict[Path, str]
    acked: set[Path] = field(default_factory=set)
    attempts: int = 0
    refusals: int = 0
    split: bool = False  # first sent in two halves to both receivers at once

    @property
    def acked_sops(self) -> set[str]:
        return {self.sop_uids[p] for p in self.acked}

    @property
    def pending(self) -> list[Path]:
        return [p for p in self.files if p not in self.acked]


def write_studies(folder: Path, count: int, slices: int = 48) -> list[Study]:
    """``count`` studies of ``slices`` 128×128 slices; see the module docstring."""
    from tests.unit.analysis.chest import Nodule, chest, write_volume

    spacing = (1.25, 1.5, 1.5)
    nodules = [Nodule((slices / 2, 57, 37), (5, 5, 5)), Nodule((slices / 3, 50, 91), (4, 4, 4))]
    hu = np.asarray(chest((slices, 128, 128), spacing, nodules))
    studies = []
    for index in range(count):
        patient = patient_for(index)

        def edit(ds: Dataset, _k: int, patient: Patient = patient) -> None:
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = patient.name
            ds.PatientID = patient.patient_id
            ds.ReferringPhysicianName = patient.referring

        paths, uids = write_volume(hu, folder / f"study{index:03d}", spacing=spacing, edit=edit)
        study_uid = _study_uid(paths[0])
        studies.append(Study(index, patient, study_uid, paths, dict(zip(paths, uids, strict=True))))
    return studies


def _study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@dataclass
class Sender:
    """See the module docstring; ``run()`` blocks until every study is acknowledged or the
    deadline passes."""

    studies: Sequence[Study]
    ports: Sequence[int]
    interval: float  # seconds between the first sends of two studies
    deadline: float  # monotonic time after which nothing is sent again
    associations: int = 3
    split_every: int = 3
    retry_pause: float = 2.0
    _queue: queue.PriorityQueue[tuple[float, int]] = field(default_factory=queue.PriorityQueue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        start = time.monotonic()
        for study in self.studies:
            self._queue.put((start + study.index * self.interval, study.index))
        threads = [
            threading.Thread(target=self._loop, name=f"scu-{i}", daemon=True)
            for i in range(self.associations)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _loop(self) -> None:
        by_index = {s.index: s for s in self.studies}
        while True:
            with self._lock:
                if all(not s.pending for s in self.studies):
                    return
            try:
                due, index = self._queue.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > self.deadline:
                    return
                continue
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.5))
                self._queue.put((due, index))
                continue
            study = by_index[index]
            self._attempt(study)
            if study.pending and time.monotonic() < self.deadline:
                self._queue.put((time.monotonic() + self.retry_pause, index))

    def _attempt(self, study: Study) -> None:
        pending = study.pending
        first = (study.index + study.attempts) % len(self.ports)
        study.attempts += 1
        if study.attempts == 1 and study.index % self.split_every == 0 and len(self.ports) > 1:
            study.split = True
            halves = [pending[: len(pending) // 2], pending[len(pending) // 2 :]]
            threads = [
                threading.Thread(target=self._send, args=(study, half, self.ports[i]))
                for i, half in enumerate(halves)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            self._send(study, pending, self.ports[first])

    def _send(self, study: Study, files: list[Path], port: int) -> None:
        try:
            report = send_paths(
                files, host="127.0.0.1", port=port, aet="CHAOSPACS", called_aet="NODULEFLOW"
            )
            failed = {path for path, _reason in report.failures}
        except Exception as exc:  # a sender that crashed acknowledged nothing
            log.warning("send failed: %s", type(exc).__name__)
            failed = set(files)
        with self._lock:
            study.acked.update(p for p in files if p not in failed)
            study.refusals += len(failed)
