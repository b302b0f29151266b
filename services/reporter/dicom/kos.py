"""Key Object Selection document (PS3.3 A.35.4, TID 2010) flagging a job's key objects.

The key images themselves are Secondary Captures (see ``keyimage``), which show the finding
the same way in every viewer; the KOS is what makes a PACS and its viewers *flag* them.
It references, for each finding with a key image:

* the source CT slice the finding is largest on (the slice the SR's 2D region is drawn on),
* the key image (Secondary Capture) made from it,

and the job's SR, so "key images" in the PACS lead to the measurements.

The title is (113000, DCM, "Of Interest") from CID 7010: the title PACS and viewers read as
"key images" (Weasis' and dcm4chee's key-image filters, IHE KIN). The other candidates do
not fit: "For Report Attachment" (113020) asks a reporting system to attach the images to
*its* report, "Best In Set" (113013) chooses among similar images, and the rejection
titles (113001, 113037-113039) hide instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from services.reporter.dicom import codes as nf
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.sr import device_observer

KOS_SERIES_BASE = 9400
TITLE = codes.DCM.OfInterest  # 113000
DESCRIPTION = "Lung nodule AI: key slices, key images and the measurement report"
_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def identity(dataset: Dataset) -> Dataset:
    """The four UIDs of an instance, plus Rows/Columns for images (IMAGE vs COMPOSITE
    references); what a KOS needs of the objects it flags."""
    out = Dataset()
    for keyword in _IDENTITY:
        if keyword not in dataset:
            raise ValueError(f"a referenced instance lacks {keyword}")
        setattr(out, keyword, getattr(dataset, keyword))
    for keyword in ("Rows", "Columns"):
        if keyword in dataset:
            setattr(out, keyword, getattr(dataset, keyword))
    return out


def build_kos(
    *,
    key_slices: Sequence[Dataset],
    key_images: Sequence[Dataset],
    sr: Dataset,
    algorithm: Algorithm,
    uids: OutputUids,
    supersedes_version: int | None = None,
) -> KeyObjectSelectionDocument:
    """The KOS of one job.

    Parameters
    ----------
    key_slices
        Sanitised headers (``sanitise.image_header``) of the source CT slices the findings
        are largest on; the first supplies patient and study identity.
    key_images
        The job's key images (Secondary Capture data sets or headers).
    sr
        The job's SR (or its header: SOP Class/Instance, Series and Study UIDs).
    uids
        Output UIDs of this job; the KOS is ``uids.kos_instance`` in ``uids.kos_series``.

    Raises
    ------
    ValueError
        Without a key slice (nothing to flag), or when a referenced object lacks a UID or
        belongs to another study.
    """
    if not key_slices:
        raise ValueError("a KOS needs at least one key slice to flag")
    study_uid = str(key_slices[0].StudyInstanceUID)
    referenced = [identity(ds) for ds in [*key_slices, *key_images, sr]]
    if any(str(ds.StudyInstanceUID) != study_uid for ds in referenced):
        raise ValueError("a KOS references only instances of its own study")
    unique = list({str(ds.SOPInstanceUID): ds for ds in referenced}.values())
    content = KeyObjectSelection(
        document_title=TITLE,
        referenced_objects=unique,
        observer_device_context=device_observer(algorithm),
        description=DESCRIPTION
        + (f" (supersedes v{supersedes_version})" if supersedes_version is not None else ""),
    )
    series_description = "Lung nodule AI key objects"
    if supersedes_version is not None:
        series_description += f" (supersedes v{supersedes_version})"
    kos = KeyObjectSelectionDocument(
        evidence=[key_slices[0], *unique[1:]],
        content=content,
        series_instance_uid=uids.kos_series,
        series_number=KOS_SERIES_BASE + uids.version,
        sop_instance_uid=uids.kos_instance,
        instance_number=1,
        manufacturer=nf.MANUFACTURER,
        series_description=series_description,
    )
    return kos
