"""C-STORE SCU: send files and folders of DICOM to a Storage SCP (``noduleflow send``).

Proposes exactly the presentation contexts the files need (their SOP class and transfer
syntax), sends the files as they are (no decoding, no transcoding) over one or several
parallel associations, and reports per-file outcomes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255)


@dataclass(frozen=True)
class DicomFile:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What happened to every file; ``ok`` when none failed and something was sent."""

    total: int = 0
    success: int = 0
    warning: int = 0
    skipped_non_dicom: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def failure(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures and self.success + self.warning == self.total and self.total > 0

    def add(self, path: Path, status: int | None, error: str = "") -> None:
        with self._lock:
            category = code_to_category(status) if status is not None else None
            if category == STATUS_SUCCESS:
                self.success += 1
            elif category == STATUS_WARNING:  # PS3.4 B.2.3: stored, with a warning
                self.warning += 1
            else:
                reason = error or (f"status 0x{status:04X}" if status is not None else "no reply")
                self.failures.append((path, reason))

    def summary(self) -> str:
        text = (
            f"sent {self.success + self.warning}/{self.total} files: {self.success} success, "
            f"{self.warning} warning, {self.failure} failed"
        )
        if self.skipped_non_dicom:
            text += f"; {self.skipped_non_dicom} non-DICOM files skipped"
        for path, reason in self.failures[:10]:
            text += f"\n  failed: {path} ({reason})"
        if self.failure > 10:
            text += f"\n  … and {self.failure - 10} more"
        return text


def _walk(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
    return files


def scan(paths: Iterable[Path]) -> tuple[list[DicomFile], int]:
    """DICOM files under ``paths`` (folders are walked) and the count of other files."""
    found, skipped = [], 0
    for path in _walk(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class = str(ds.file_meta.MediaStorageSOPClassUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError):
            skipped += 1
            continue
        found.append(DicomFile(path, sop_class, syntax))
    return found, skipped


def contexts_for(files: Sequence[DicomFile]) -> list[tuple[str, list[str]]]:
    """One presentation context per (SOP class, transfer syntax) the files use."""
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})
    if len(pairs) > MAX_CONTEXTS - 1:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs; at most 127 fit")
    return [(sop_class, [syntax]) for sop_class, syntax in pairs]


def _send_batch(
    files: Sequence[DicomFile],
    contexts: list[tuple[str, list[str]]],
    *,
    host: str,
    port: int,
    aet: str,
    called_aet: str,
    report: SendReport,
    advance: Callable[[], None],
) -> None:
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = 131072
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(Verification)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed"
        for item in files:
            report.add(item.path, None, reason)
            advance()
        return
    try:
        for item in files:
            if not assoc.is_established:
                report.add(item.path, None, "association lost")
                advance()
                continue
            try:
                status = assoc.send_c_store(item.path)
                code = int(status.Status) if "Status" in status else None
                report.add(item.path, code)
            except (OSError, ValueError, AttributeError, RuntimeError) as exc:
                report.add(item.path, None, exc.__class__.__name__)
            advance()
    finally:
        if assoc.is_established:
            assoc.release()


def send_paths(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    aet: str,
    called_aet: str,
    associations: int = 1,
    progress: bool = False,
) -> SendReport:
    """Send every DICOM file under ``paths`` by C-STORE; see :class:`SendReport`.

    Files go out as they are, without decoding (pynetdicom's chunked send). That switch is
    process-wide, so it is restored afterwards for other senders in the same process.
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _send_all(
            paths,
            host=host,
            port=port,
            aet=aet,
            called_aet=called_aet,
            associations=associations,
            progress=progress,
        )
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _send_all(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    aet: str,
    called_aet: str,
    associations: int,
    progress: bool,
) -> SendReport:
    files, skipped = scan(paths)
    report = SendReport(total=len(files), skipped_non_dicom=skipped)
    if not files:
        return report
    contexts = contexts_for(files)
    n = max(1, min(associations, len(files)))
    batches = [files[i::n] for i in range(n)]

    def run(advance: Callable[[], None]) -> None:
        threads = [
            threading.Thread(
                target=_send_batch,
                args=(batch, contexts),
                kwargs={
                    "host": host,
                    "port": port,
                    "aet": aet,
                    "called_aet": called_aet,
                    "report": report,
                    "advance": advance,
                },
                daemon=True,
            )
            for batch in batches
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    if not progress:
        run(lambda: None)
        return report
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task(f"C-STORE to {called_aet}@{host}:{port}", total=len(files))
        lock = threading.Lock()

        def advance() -> None:
            with lock:
                bar.advance(task)

        run(advance)
    return report
