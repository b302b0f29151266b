"""``services.receiver.fast.install``/``uninstall``: every pynetdicom attribute the fast path
replaces is recorded and put back, and an unsupported pynetdicom is refused."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom import (
    _config,
    association,
    dimse,
    dimse_messages,
    dimse_primitives,
    dul,
    pdu_items,
    pdu_primitives,
    presentation,
    transport,
)

from services.receiver import fast
from services.receiver.fast import tempfiles
from services.receiver.fast.patching import Patch, apply

# Listed here, not taken from the implementation: the 17 attributes the fast path replaces.
PATCHED: list[tuple[Any, str]] = [
    (dimse_messages, "create_file_meta"),
    (dimse_messages, "write_file_meta_info"),
    (dimse_messages, "decode"),
    (dimse_messages, "NamedTemporaryFile"),
    (transport, "deepcopy"),
    (transport.AssociationSocket, "recv"),
    (dimse.DIMSEServiceProvider, "send_msg"),
    (dul.DULServiceProvider, "_read_pdu_data"),
    (dul.DULServiceProvider, "run_reactor"),
    (dul, "time"),
    (association, "time"),
    (association.Association, "_run_reactor"),
    (_config, "STORE_RECV_CHUNKED_DATASET"),
    (dimse_primitives, "set_uid"),
    (pdu_items, "set_uid"),
    (pdu_primitives, "set_uid"),
    (presentation, "set_uid"),
]
OWNERS = list({id(owner): owner for owner, _ in PATCHED}.values())


def _name(owner: Any, attribute: str) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}.{attribute}"
    return f"{owner.__name__}.{attribute}"


def _snapshot() -> dict[int, dict[str, Any]]:
    """Everything in the namespaces of the patched modules and classes."""
    return {id(owner): dict(vars(owner)) for owner in OWNERS}


def _assert_untouched(before: dict[int, dict[str, Any]]) -> None:
    for owner in OWNERS:
        now, then = vars(owner), before[id(owner)]
        assert now.keys() == then.keys(), owner
        changed = [key for key in then if now[key] is not then[key]]
        assert changed == [], f"{owner}: {changed}"


def test_install_then_uninstall_restores_every_original(tmp_path: Path) -> None:
    assert fast.current() is None
    before = _snapshot()
    installation = fast.install(tmp_path)
    assert sorted(installation.targets) == sorted(_name(o, a) for o, a in PATCHED)
    assert installation.pynetdicom_version == pynetdicom.__version__
    for owner, attribute in PATCHED:
        assert vars(owner)[attribute] is not before[id(owner)][attribute], attribute
    for item in installation.replaced:
        assert item.original is before[id(item.patch.owner)][item.patch.name]
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    handle = dimse_messages.NamedTemporaryFile()
    assert isinstance(handle, tempfiles.HashingFile) and handle.name.startswith(str(tmp_path))
    handle.close()

    # A second install (another receiver in this process) changes only the folder and the
    # cap; the recorded originals stay pynetdicom's own, not our replacements.
    other = tmp_path / "other"
    other.mkdir()
    assert fast.install(other, max_bytes=10) is installation
    handle = dimse_messages.NamedTemporaryFile()
    assert handle.name.startswith(str(other)) and handle.max_bytes == 10
    handle.close()

    assert fast.uninstall() is installation
    _assert_untouched(before)
    assert fast.current() is None
    assert fast.uninstall() is None  # nothing left to undo
    with pytest.raises(RuntimeError, match="not configured"):
        tempfiles._FACTORY()


def test_installed_block_restores_on_exit_and_on_error(tmp_path: Path) -> None:
    before = _snapshot()
    with fast.installed(tmp_path) as installation:
        assert fast.current() is installation
        assert _config.STORE_RECV_CHUNKED_DATASET is True
    _assert_untouched(before)
    with pytest.raises(ZeroDivisionError), fast.installed(tmp_path):
        _ = 1 / 0
    _assert_untouched(before)
    assert fast.current() is None


def test_installed_block_leaves_an_earlier_install_in_place(tmp_path: Path) -> None:
    before = _snapshot()
    outer = fast.install(tmp_path)
    with fast.installed(tmp_path) as inner:
        assert inner is outer
    assert fast.current() is outer
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    fast.uninstall()
    _assert_untouched(before)


@pytest.mark.parametrize("version", ["3.1.0", "3.1.0rc1", "3.0.3", "2.0.2", "4.0.0", "dev"])
def test_unsupported_pynetdicom_is_refused_untouched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str
) -> None:
    before = _snapshot()
    monkeypatch.setattr(pynetdicom, "__version__", version)
    with pytest.raises(fast.UnsupportedPynetdicom) as refused:
        fast.install(tmp_path)
    assert f"pynetdicom {version} is installed" in str(refused.value)
    assert "pynetdicom>=3.0.4,<3.1" in str(refused.value)
    assert fast.current() is None
    _assert_untouched(before)
    with pytest.raises(fast.UnsupportedPynetdicom), fast.installed(tmp_path):
        pytest.fail("the block must not run on an unsupported pynetdicom")
    _assert_untouched(before)


@pytest.mark.parametrize("version", ["3.0.4", "3.0.5", "3.0.10.dev0"])
def test_supported_versions(version: str) -> None:
    assert fast.check_version(version) == version


def test_apply_is_all_or_nothing() -> None:
    owner = types.ModuleType("fake")
    owner.first = 1  # type: ignore[attr-defined]
    with pytest.raises(LookupError, match=r"fake\.missing does not exist"):
        apply([Patch(owner, "first", 2), Patch(owner, "missing", 3)])
    assert owner.first == 1  # type: ignore[attr-defined]
    assert not hasattr(owner, "missing")
