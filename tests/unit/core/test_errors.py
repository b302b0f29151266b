"""One error hierarchy: every error noduleflow raises on purpose says, by its type, whether a
retry can help (and, when not, whether the job ends skipped or failed)."""

from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import OperationalError

from services.analysis.errors import AnalysisError
from services.core.broker import PublishError
from services.core.errors import (
    NoduleflowError,
    PermanentError,
    ResourceExhausted,
    TransientError,
    is_transient,
)
from services.core.storage import UnsafeKeyError
from services.receiver.fast import UnsupportedPynetdicom
from services.receiver.index import HeaderError
from services.receiver.reconcile import Unusable
from services.receiver.store import InstanceConflict, NoSpaceError
from services.reporter.api.auth import AuthError
from services.reporter.dicom.inputs import InputError
from services.reporter.fhir.push import PushRefused, PushUnavailable
from services.worker.policy import BadMessage, StorageUnavailable, StudyUnusable
from services.worker.store import ClaimLost

PERMANENT = [
    AnalysisError,
    BadMessage,
    StudyUnusable,
    ClaimLost,
    InputError,
    AuthError,
    PushRefused,
    UnsafeKeyError,
    Unusable,
    HeaderError,
    InstanceConflict,
    UnsupportedPynetdicom,
]
TRANSIENT = [StorageUnavailable, PublishError, NoSpaceError, ResourceExhausted, PushUnavailable]


@pytest.mark.parametrize("kind", PERMANENT)
def test_permanent_types(kind: type[Exception]) -> None:
    assert issubclass(kind, PermanentError) and not issubclass(kind, TransientError)


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_types(kind: type[Exception]) -> None:
    assert issubclass(kind, TransientError) and not issubclass(kind, PermanentError)


def test_the_library_bases_are_kept_for_existing_handlers() -> None:
    assert issubclass(StorageUnavailable, OSError) and issubclass(NoSpaceError, OSError)
    assert issubclass(BadMessage, ValueError) and issubclass(HeaderError, ValueError)
    assert issubclass(UnsafeKeyError, ValueError) and issubclass(ResourceExhausted, MemoryError)
    assert issubclass(PublishError, RuntimeError) and issubclass(InputError, RuntimeError)


def test_code_and_verdict() -> None:
    error = AnalysisError("not-ct", "modality MR")
    assert (error.code, error.skip, error.verdict, error.message) == (
        "not-ct",
        True,
        "skipped",
        "modality MR",
    )
    assert str(error) == "not-ct: modality MR"
    broken = AnalysisError("corrupt-pixel-data", "10 bytes short")
    assert (broken.skip, broken.verdict) == (False, "failed")
    assert StorageUnavailable("x").code == "storage-unavailable"
    assert PermanentError("x").verdict == "failed" and NoduleflowError("x").code == "error"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (StorageUnavailable("3 files"), True),
        (ResourceExhausted("gpu"), True),
        (MemoryError(), True),
        (OperationalError("SELECT 1", {}, ConnectionError()), True),
        (OSError(errno.ESTALE, "stale"), True),
        (OSError(errno.EACCES, "denied"), False),
        (AnalysisError("not-ct", "MR"), False),
        (RuntimeError("out of memory"), False),  # by type: an unknown RuntimeError is a bug
        (KeyError("x"), False),
    ],
)
def test_is_transient_is_decided_by_type(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
