"""The typed contract (services.core.contracts): the finding, the model, the job's details,
and the one mapping between the finding and its database row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from services.core.contracts import Finding, Geometry, JobDetails, ModelIdentity
from services.core.db import Database, Job, Study
from services.core.db import Finding as FindingRow

FIELDS = [
    "center_mm",
    "diameter_mm",
    "long_axis_mm",
    "short_axis_mm",
    "volume_mm3",
    "mean_hu",
    "kind",
    "confidence",
    "lung_rads",
    "solid_diameter_mm",
    "finding_type",
    "slice_number",
    "sop_instance_uid",
]


def finding(**overrides: object) -> Finding:
    values: dict[str, object] = {
        "center_mm": (-60.456, 20.25, -110.0),
        "diameter_mm": 34.04,
        "long_axis_mm": 38.2,
        "short_axis_mm": 30.1,
        "volume_mm3": 20650.44,
        "mean_hu": 31.26,
        "kind": "solid",
        "confidence": 0.93456,
        "lung_rads": "4B",
        "solid_diameter_mm": 34.04,
        "finding_type": "mass",
    }
    values.update(overrides)
    return Finding.model_validate(values)


def test_the_json_shape_is_the_field_list_once() -> None:
    item = finding().rounded().to_json()
    assert list(item) == FIELDS
    assert item["center_mm"] == [-60.46, 20.25, -110.0]
    assert (item["diameter_mm"], item["volume_mm3"], item["confidence"]) == (34.0, 20650.4, 0.935)
    assert item["finding_type"] == "mass"


def test_nodule_is_the_default_type_and_numpy_values_are_accepted() -> None:
    item = Finding.model_validate(
        {
            "center_mm": np.array([1.0, 2.0, 3.0]),
            "diameter_mm": np.float32(6.5),
            "long_axis_mm": 7.0,
            "short_axis_mm": 6.0,
            "volume_mm3": 140.0,
            "mean_hu": np.float64(-20.0),
            "kind": "part-solid",
            "confidence": 0.9,
            "lung_rads": "3",
        }
    )
    assert (item.finding_type, item.solid_diameter_mm, item.is_mass) == ("nodule", 0.0, False)
    assert item.center_mm == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "calcified"},
        {"finding_type": "tumour"},
        {"diameter_mm": -1.0},
        {"volume_mm3": math.inf},
        {"mean_hu": math.nan},
        {"center_mm": (1.0, 2.0)},
        {"lung_rads": "4A-long"},
    ],
)
def test_invalid_findings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        finding(**bad)


def test_row_mapping_round_trips_and_keeps_the_column_names(db: Database) -> None:
    original = finding()
    with db.session() as session:
        study = Study(study_instance_uid="1.2.3")
        job = Job(study=study, version=1)
        row = FindingRow.from_contract(
            original,
            index=1,
            bbox=[1, 2, 3, 4, 5, 6],
            mask_shape=[3, 3, 3],
            mask=b"x",
            source_sop_uids=["1.2.3.4"],
        )
        row.job = job
        session.add_all([study, job, row])
        session.flush()
        row_id = row.id
    with db.session() as session:
        stored = session.get(FindingRow, row_id)
        assert stored is not None
        assert (stored.center_x, stored.center_y, stored.center_z) == original.center_mm
        assert stored.mask_bbox == {"bbox": [1, 2, 3, 4, 5, 6], "shape": [3, 3, 3]}
        assert stored.source_sop_uids == {"uids": ["1.2.3.4"]}
        assert stored.to_contract() == original


def test_a_row_written_before_masses_reads_as_a_nodule() -> None:
    row = FindingRow(
        index=1,
        center_x=1.0,
        center_y=2.0,
        center_z=3.0,
        diameter_mm=6.0,
        long_axis_mm=6.5,
        short_axis_mm=5.5,
        volume_mm3=100.0,
        mean_hu=20.0,
        kind="solid",
        confidence=0.7,
        lung_rads="3",
    )  # not flushed: the new columns hold no value yet
    contract = row.to_contract()
    assert (contract.finding_type, contract.solid_diameter_mm) == ("nodule", 0.0)


WRITTEN_BY_SCHEMA_1 = {
    "series_uid": "1.2.3",
    "series_reason": "only axial CT series",
    "sop_uids": ["1.2.3.1", "1.2.3.2"],
    "instances": 2,
    "provider": "CPUExecutionProvider",
    "model": {"name": "nodule-seg", "version": "0.1"},
    "geometry": {
        "shape": [4, 16, 16],
        "origin": [-5.6, -5.6, 0.0],
        "spacing": [1.0, 0.7, 0.7],
        "row_dir": [1.0, 0.0, 0.0],
        "col_dir": [0.0, 1.0, 0.0],
        "slice_dir": [0.0, 0.0, -1.0],
    },
    "worker": "host:1",
    "attempt": 1,
}


def test_details_read_and_write_the_stored_layout() -> None:
    details = JobDetails.parse(WRITTEN_BY_SCHEMA_1)
    assert details.model == ModelIdentity(
        name="nodule-seg", version="0.1", provider="CPUExecutionProvider"
    )
    assert details.sop_uids == ("1.2.3.1", "1.2.3.2")
    assert details.geometry is not None and details.geometry.shape == (4, 16, 16)
    assert details.to_stored() == WRITTEN_BY_SCHEMA_1


@pytest.mark.parametrize(
    ("stored", "model_version", "expected"),
    [
        (None, "", ("nodule-seg", "unknown")),
        ({}, "1.2.0", ("nodule-seg", "1.2.0")),
        ({"model": {"name": "other"}}, "2.0", ("other", "2.0")),
        ({"model": {"name": "", "version": ""}}, "", ("nodule-seg", "unknown")),
        ({"model": "garbage", "sop_uids": ["1.2"]}, "3.1", ("nodule-seg", "3.1")),
    ],
)
def test_old_or_partial_details_read_tolerantly(
    stored: dict[str, object] | None, model_version: str, expected: tuple[str, str]
) -> None:
    details = JobDetails.parse(stored)
    model = details.identity(model_version)
    assert (model.name, model.version) == expected


def test_a_malformed_entry_is_dropped_not_fatal() -> None:
    details = JobDetails.parse(
        {"series_uid": "1.2", "geometry": {"shape": "big"}, "sop_uids": ["1.2.1"], "x": 1}
    )
    assert (details.series_uid, details.geometry, details.sop_uids) == ("1.2", None, ("1.2.1",))


def test_the_claim_only_details_stay_small() -> None:
    assert JobDetails(worker="w:1").to_stored() == {"worker": "w:1"}
    assert JobDetails.parse({}).to_stored() == {}


def test_the_job_row_reads_its_details_and_model() -> None:
    job = Job(details=WRITTEN_BY_SCHEMA_1, model_version="0.1")
    assert job.job_details.series_uid == "1.2.3"
    assert job.model_identity.version == "0.1"
    assert Job(details={}, model_version="9").model_identity.version == "9"


def test_geometry_is_typed() -> None:
    with pytest.raises(ValidationError):
        Geometry.model_validate({**WRITTEN_BY_SCHEMA_1["geometry"], "origin": [0.0]})  # type: ignore[dict-item]
