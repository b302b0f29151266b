"""The worker's one mapping from an analysis result onto the contract: rows and details."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.contracts import JobDetails
from services.core.masks import unpack_mask
from services.worker import results
from tests.factories.worker import FakeFinding, FakeResult


def test_a_mass_keeps_its_type_and_solid_diameter() -> None:
    mass = FakeFinding(diameter_mm=41.0, lung_rads="4B")
    mass.finding_type = "mass"  # type: ignore[attr-defined]
    mass.solid_diameter_mm = 38.5  # type: ignore[attr-defined]
    row = results.finding_row(mass, 1)  # type: ignore[arg-type]
    assert (row.finding_type, row.solid_diameter_mm, row.diameter_mm) == ("mass", 38.5, 41.0)
    assert (row.center_x, row.center_y, row.center_z) == (1.0, 2.0, 3.0)
    assert row.to_contract().is_mass
    assert unpack_mask(row.mask, (2, 3, 4)).all()


def test_a_finding_without_the_new_fields_is_a_nodule() -> None:
    row = results.finding_row(FakeFinding(), 2)  # type: ignore[arg-type]
    assert (row.index, row.finding_type, row.solid_diameter_mm) == (2, "nodule", 0.0)


@pytest.mark.parametrize("bad", [{"kind": "calcified"}, {"diameter_mm": float("nan")}])
def test_an_invalid_finding_is_refused_before_any_row(bad: dict[str, object]) -> None:
    finding = FakeFinding(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        results.finding_row(finding, 1)  # type: ignore[arg-type]


def test_a_mask_that_does_not_fit_its_box_is_refused() -> None:
    finding = FakeFinding(mask=np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="does not fit"):
        results.finding_row(finding, 1)  # type: ignore[arg-type]


def test_details_are_typed_and_stored_in_the_schema_1_layout() -> None:
    details = results.job_details(FakeResult([]), worker="w:1", attempt=2)  # type: ignore[arg-type]
    assert isinstance(details, JobDetails)
    assert details.model is not None and details.model.provider == "CPUExecutionProvider"
    stored = details.to_stored()
    assert stored["model"] == {"name": "nodule-seg", "version": "0.1"}
    assert (stored["provider"], stored["instances"], stored["attempt"]) == (
        "CPUExecutionProvider",
        2,
        2,
    )
    assert JobDetails.parse(stored) == details


def test_the_key_slice_is_where_the_cross_section_is_largest() -> None:
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[0, 1, 1] = True
    mask[1] = True  # the second slice of the box (volume slice 2) is the largest
    row = results.finding_row(FakeFinding(mask=mask), 1)  # type: ignore[arg-type]
    assert (row.slice_number, row.sop_instance_uid) == (3, "1.2.3.2")
    contract = row.to_contract()
    assert (contract.slice_number, contract.sop_instance_uid) == (3, "1.2.3.2")
    assert contract.to_json()["slice_number"] == 3


def test_a_finding_without_source_uids_has_a_slice_but_no_instance() -> None:
    row = results.finding_row(FakeFinding(source_sop_uids=[]), 1)  # type: ignore[arg-type]
    assert (row.slice_number, row.sop_instance_uid) == (2, None)
