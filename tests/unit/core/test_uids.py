from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage

from services.core.storage import LocalStorage, UnsafeKeyError, instance_key
from services.core.uids import derived_uid, is_valid_uid


@pytest.mark.parametrize(
    "uid", ["../x", "1" * 65, "1.2.abc", "", "1..2", "1.2.", "/etc/passwd", "1.2\x00.3", "..\\1"]
)
def test_hostile_uids_are_refused(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(UnsafeKeyError):
        instance_key(uid, "1.2", "1.3")


def test_valid_uid_and_key() -> None:
    assert is_valid_uid(CTImageStorage)
    assert is_valid_uid("1.2.05", strict=False) and not is_valid_uid("1.2.05", strict=True)
    assert instance_key("1.2", "1.3", "1.4") == "1.2/1.3/1.4.dcm"


def test_derived_uid_is_stable_and_valid() -> None:
    a = derived_uid("1.2.3", "job", "sr")
    assert a == derived_uid("1.2.3", "job", "sr")
    assert a != derived_uid("1.2.3", "job", "seg")
    assert a.startswith("2.25.") and is_valid_uid(a, strict=True)


def test_storage_commit_is_atomic_and_confined(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "s")
    temp = storage.temp_path()
    temp.write_bytes(b"data")
    storage.commit(temp, instance_key("1.2", "1.3", "1.4"))
    assert storage.path("1.2/1.3/1.4.dcm").read_bytes() == b"data"
    assert not temp.exists()
    with pytest.raises(UnsafeKeyError):
        storage.path("../../etc/passwd")
    storage.temp_path().write_bytes(b"half")
    assert storage.clean_temp() == 1
