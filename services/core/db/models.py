"""Relational model: the source of truth for studies, jobs, findings and deliveries."""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from services.core import contracts


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def patient_key(patient_id: str, issuer: str = "") -> str:
    """Opaque, stable FHIR ``Patient.id`` for a DICOM Patient ID and its Issuer of Patient ID
    (keeps MRNs out of URLs). Without an issuer the key is what it has always been."""
    scoped = f"{issuer}|{patient_id}" if issuer else patient_id
    return hashlib.sha256(f"noduleflow:patient:{scoped}".encode()).hexdigest()[:32]


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s|]+$")


def issuer_system(issuer: str) -> str:
    """The identifier system an Issuer of Patient ID (0010,0021) names: the issuer itself when
    it is an absolute URI, ``urn:oid:<issuer>`` when it is an OID, else "" (a local name,
    for which the configured MRN system applies)."""
    value = issuer.strip()
    if _OID.match(value) and len(value) <= 64:
        return f"urn:oid:{value}"
    if _URI.match(value):
        return value
    return ""


def _patient_key_default(context: Any) -> str:
    params = context.get_current_parameters()
    return patient_key(params.get("patient_id") or "", params.get("issuer_of_patient_id") or "")


def _patient_id_system_default(context: Any) -> str:
    return issuer_system(context.get_current_parameters().get("issuer_of_patient_id") or "")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class JobState(enum.StrEnum):
    """Job life cycle (docs/architecture.md, "Job states"): receiving → queued → inferring →
    reporting → done, or failed / skipped with a reason."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    INFERRING = "inferring"
    REPORTING = "reporting"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.SKIPPED)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    # Issuer of Patient ID (0010,0021), and the identifier system it names (issuer_system).
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_id_system: Mapped[str] = mapped_column(String(72), default=_patient_id_system_default)
    # Search key for FHIR Patient references; kept in step with patient_id and its issuer.
    patient_key: Mapped[str] = mapped_column(String(32), default=_patient_key_default, index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when new instances arrived since the last job was created; cleared on completion.
    pending_since: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # Associations currently carrying this study, and when the last of them was released.
    open_associations: Mapped[int] = mapped_column(Integer, default=0)
    last_released_at: Mapped[datetime | None] = mapped_column(default=None)
    # Bumped whenever a stored instance is replaced by different content.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # When retention last purged its images (services/core/retention); a later receipt
    # (last_received_at after it) means images are stored again.
    purged_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set when the receiver restarted while an association carried this study (its transfer
    # was cut); cleared when a later association carrying it is released normally.
    interrupted_at: Mapped[datetime | None] = mapped_column(default=None)

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.version")

    @validates("patient_id")
    def _keep_patient_key(self, _key: str, value: str) -> str:
        self.patient_key = patient_key(value or "", self.issuer_of_patient_id or "")
        return value

    @validates("issuer_of_patient_id")
    def _keep_issuer(self, _key: str, value: str) -> str:
        self.patient_key = patient_key(self.patient_id or "", value or "")
        self.patient_id_system = issuer_system(value or "")
        return value


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, default=None)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    path: Mapped[str] = mapped_column(String(255))  # relative to STORAGE_DIR
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # dot(ImagePositionPatient, slice normal) in mm, for gap checks; None when not an image
    slice_position: Mapped[float | None] = mapped_column(Float, default=None)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One analysis of one study; a later job (higher version) supersedes earlier ones."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "version", name="uq_jobs_study_version"),
        # FHIR DiagnosticReport search: done jobs by issue time.
        Index("ix_jobs_state_finished", "state", "finished_at"),
        # One job per versionId of a DiagnosticReport (services/reporter/versions.py).
        UniqueConstraint("report_id", "report_version", name="uq_jobs_report_version"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # {"read": s, "assemble": s, "crop": s, "inference": s, "postprocess": s, ...}
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # How the result was made: ``contracts.JobDetails`` as stored (read it via job_details).
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    findings_count: Mapped[int | None] = mapped_column(Integer, default=None)
    # Instances present when the job was created (sop uid count) for supersede logic.
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # What the receiver knew of the study's completeness when it made the job
    # (``receiver.completion.Completeness.to_stored``; {} = complete, rows before 0008).
    completeness: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # FHIR versions, set when the job becomes done: the DiagnosticReport its result is a
    # version of (the id of the study's first report), that version's number (None: an older
    # analysis that finished after a newer one, never published), and when a later analysis
    # replaced it (its Observations became entered-in-error then).
    report_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    report_version: Mapped[int | None] = mapped_column(Integer, default=None)
    superseded_at: Mapped[datetime | None] = mapped_column(default=None)

    study: Mapped[Study] = relationship(back_populates="jobs")
    findings: Mapped[list[Finding]] = relationship(
        back_populates="job", order_by="Finding.index", cascade="all, delete-orphan"
    )
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", cascade="all")

    @property
    def partial_summary(self) -> str:
        """The sentence the reports carry for a partial study, empty for a complete one.

        It says what was not received (the missing z ranges); the receiver writes it in
        ``completeness``. The analysis adds what it did about slices missing inside the
        analysed series (``details.missing``), and names their ranges itself when the
        receiver did not know the study was partial."""
        stored = self.completeness or {}
        missing = self.job_details.missing
        if stored.get("status") != "partial":
            return missing.summary() if missing is not None else ""
        summary = str(stored.get("summary") or "Incomplete study: some slices were not received.")
        return f"{summary} {missing.summary(ranges=False)}" if missing is not None else summary

    @property
    def job_details(self) -> contracts.JobDetails:
        return contracts.JobDetails.parse(self.details)

    @property
    def model_identity(self) -> contracts.ModelIdentity:
        """The model that made the result (``details.model``, else ``model_version``)."""
        return self.job_details.identity(self.model_version)


class Finding(Base):
    """One finding of one job: a ``contracts.Finding`` (centre as ``center_x/_y/_z``, patient
    LPS mm) plus its place in the job (``index``) and its voxels (mask, source slices)."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_findings_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # 1-based, ordered by suspicion
    center_x: Mapped[float] = mapped_column(Float)
    center_y: Mapped[float] = mapped_column(Float)
    center_z: Mapped[float] = mapped_column(Float)
    diameter_mm: Mapped[float] = mapped_column(Float)
    long_axis_mm: Mapped[float] = mapped_column(Float)
    short_axis_mm: Mapped[float] = mapped_column(Float)
    volume_mm3: Mapped[float] = mapped_column(Float)
    mean_hu: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    lung_rads: Mapped[str] = mapped_column(String(4))
    solid_diameter_mm: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    finding_type: Mapped[str] = mapped_column(String(8), default="nodule", server_default="nodule")
    # The key slice: 1-based position in the analysed series, and its SOP Instance UID.
    slice_number: Mapped[int | None] = mapped_column(Integer, default=None)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), default=None)
    # Mask: voxel bounding box in the chosen series' volume (z0, y0, x0, z1, y1, x1),
    # and the packed boolean mask inside it (numpy.packbits, zlib-compressed).
    mask_bbox: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mask: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    # SOP Instance UIDs of the source slices the nodule spans (ordered by position).
    source_sop_uids: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="findings")

    @property
    def center_mm(self) -> list[float]:
        return [self.center_x, self.center_y, self.center_z]

    @classmethod
    def from_contract(
        cls,
        finding: contracts.Finding,
        *,
        index: int,
        bbox: list[int],
        mask_shape: list[int],
        mask: bytes,
        source_sop_uids: list[str],
    ) -> Finding:
        """The row of ``finding``; the one mapping from the contract to the columns."""
        x, y, z = finding.center_mm
        return cls(
            index=index,
            center_x=x,
            center_y=y,
            center_z=z,
            # the contract's fields only (a subclass may carry masks and boxes)
            **finding.model_dump(include=set(contracts.Finding.model_fields) - {"center_mm"}),
            mask_bbox={"bbox": bbox, "shape": mask_shape},
            mask=mask,
            source_sop_uids={"uids": source_sop_uids},
        )

    def to_contract(self) -> contracts.Finding:
        """The row as the shared finding (the mapping back; mask and slices stay here)."""
        values = {name: getattr(self, name) for name in _CONTRACT_COLUMNS}
        values = {name: value for name, value in values.items() if value is not None}
        return contracts.Finding.model_validate(
            {**values, "center_mm": (self.center_x, self.center_y, self.center_z)}
        )


#: Finding columns named as the contract's fields (all but the centre, split into x/y/z)
_CONTRACT_COLUMNS = tuple(name for name in contracts.Finding.model_fields if name != "center_mm")


class FindingReview(Base):
    """A radiologist's decision on one finding (accepted or rejected, with an optional
    comment): who (the authenticated principal) and when. Rows are never changed; the
    latest one of a finding is its current review, each one a version of its Observation."""

    __tablename__ = "finding_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # accepted | rejected
    comment: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class RefusedInstance(Base):
    """An instance the receiver refused for want of resources (0xA700): its study is known
    to be incomplete until an instance with this SOP Instance UID is stored."""

    __tablename__ = "refused_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    slice_position: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str] = mapped_column(String(32), default="")
    refused_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    """A message committed with the state change that caused it; a relay publishes it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unpublished", "published_at", "id"),
        # One StudyResult per job, whatever redeliveries or concurrent attempts do.
        Index(
            "uq_outbox_study_result",
            "message_id",
            unique=True,
            sqlite_where=text("routing_key = 'study.result'"),
            postgresql_where=text("routing_key = 'study.result'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64))
    routing_key: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class Delivery(Base):
    """One outgoing artefact (SR, SEG, key image, FHIR report) and its delivery state."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "kind", "target", name="uq_delivery"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sr | seg | key-image | fhir
    target: Mapped[str] = mapped_column(String(255))  # AET@host:port, outbox dir or FHIR URL
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_status: Mapped[str] = mapped_column(String(64), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """Security and access audit trail (DICOM PS3.15 A.5 event codes)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(16))  # e.g. "110104" (DICOM Instances Transferred)
    outcome: Mapped[str] = mapped_column(String(8), default="0")  # 0 ok, 4 minor, 8 serious
    actor: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(8), default="R")  # C R U D E
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class Purge(Base):
    """One retention purge of a study's images and artefacts; also its journal: a row
    without ``finished_at`` is a purge whose files may still be on disk (resumed at start)."""

    __tablename__ = "purges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    reason: Mapped[str] = mapped_column(String(16))  # max-age | high-water | manual
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # Jobs up to this version had artefacts when the purge started (their folders go).
    job_version: Mapped[int] = mapped_column(Integer, default=0)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # instance bytes (index)
    files_removed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_removed: Mapped[int] = mapped_column(BigInteger, default=0)  # images + artefacts


class AssociationHold(Base):
    """Associations of one receiver process still carrying a study: ``lease`` is the
    receiver's replica lease number, ``process`` its SCP process (slot; -1: the supervisor's
    STOW-RS). They make up ``studies.open_associations``; a dead receiver's holds are taken
    off it by the live ones (``services/receiver/holds.py``). PostgreSQL only."""

    __tablename__ = "association_holds"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    lease: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    process: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
