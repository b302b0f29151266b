"""Viewer links from NODULEFLOW_VIEWER_URL_TEMPLATE: checked at start, values encoded."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.core.settings import Settings
from services.core.viewer import check_template, viewer_url

OHIF = "https://ohif.example/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={series}"


def test_placeholders_are_filled_and_encoded() -> None:
    assert viewer_url(OHIF, study="1.2.3", series="1.2.4") == (
        "https://ohif.example/viewer?StudyInstanceUIDs=1.2.3&initialSeriesInstanceUID=1.2.4"
    )
    hostile = viewer_url(OHIF, study="1.2&x=<y>#z/..", series="")
    assert hostile == (
        "https://ohif.example/viewer?StudyInstanceUIDs=1.2%26x%3D%3Cy%3E%23z%2F..&"
        "initialSeriesInstanceUID="
    )
    assert viewer_url("", study="1.2.3") is None


def test_weasis_and_orthanc_explorer_templates_are_accepted() -> None:
    weasis = "weasis://%24dicom%3Ars%20-r%20%22studyUID%3D{study}%22"
    assert viewer_url(check_template(weasis), study="1.2") == (
        "weasis://%24dicom%3Ars%20-r%20%22studyUID%3D1.2%22"
    )
    oe2 = "http://orthanc:8042/ui/app/#/filtered-studies?StudyInstanceUID={study}&expand=series"
    assert check_template(oe2) == oe2


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("javascript:alert({study})", "must start with"),
        ("https://v.example/?s={patient}", "unknown placeholder {patient}"),
        ("https://v.example/?s={series}", "must contain {study}"),
        ("https://v.example/?s={study", "unbalanced"),
        ("https://v.example/?s={study} x", "without spaces"),
        ("/viewer?s={study}", "must start with"),
    ],
)
def test_a_bad_template_stops_the_start(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(template)
    with pytest.raises(ValidationError, match="NODULEFLOW_VIEWER_URL_TEMPLATE"):
        Settings(viewer_url_template=template)
