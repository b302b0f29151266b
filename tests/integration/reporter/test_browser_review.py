"""A radiologist reviews findings in headless Chromium (Playwright), with the keyboard: accepts
one, rejects another, sees both in the FHIR Observations and the audit trail, follows the
viewer link, and the study page keeps its layout."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from PIL import Image, ImageStat
from sqlalchemy import select

from services.core import audit
from services.core.db import AuditEvent, Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import finding_spec, make_job, make_study, running_api
from tests.integration.reporter.test_browser_worklist import browser  # noqa: F401 (fixture)
from tests.services import free_port

pytestmark = pytest.mark.integration
AUD, ISS = "https://noduleflow.test/fhir", "https://idp.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SOP = "1.2.826.0.1.3680043.10.543.9.42"


def reviewer_token() -> str:
    now = int(time.time())
    claims = {
        "sub": "dr.house",
        "aud": AUD,
        "iss": ISS,
        "iat": now,
        "exp": now + 600,
        "scope": "user/*.rs user/Observation.u",
    }
    return jwt.encode(claims, KEY, algorithm="RS256")


@pytest.fixture
def site(db: Database, settings: Settings, tmp_path: Path) -> Iterator[tuple[str, dict, Database]]:
    with db.session() as session:
        study = make_study(session, patient_id="PAT-R", patient_name="Review^Rita", accession="R-1")
        make_study(session, patient_id="PAT-O", patient_name="Other^Otto", accession="O-1")
        made = make_job(
            session,
            study,
            findings=[
                finding_spec(
                    diameter_mm=9.0, lung_rads="4A", slice_number=42, sop_instance_uid=SOP
                ),
                finding_spec(diameter_mm=5.0, lung_rads="2", slice_number=17),
            ],
        )
        seeded = {"uid": study.study_instance_uid, "job": made.job.id}
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port = free_port()
    template = (
        f"http://127.0.0.1:{port}/viewer-stub?StudyInstanceUIDs={{study}}"
        "&initialSopInstanceUID={instance}"
    )
    configured = settings.model_copy(
        update={
            "jwt_public_key": key_file,
            "jwt_audience": AUD,
            "jwt_issuer": ISS,
            "viewer_url_template": template,
        }
    )
    with running_api(create_app(configured, db), port=port) as base:
        yield base, seeded, db


def test_review_with_the_keyboard_then_fhir_audit_viewer_and_layout(
    browser,  # noqa: F811
    site,
    tmp_path: Path,
) -> None:
    base, seeded, db = site
    uid, job = seeded["uid"], seeded["job"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))

    page.goto(f"{base}/studies/{uid}")
    page.wait_for_selector("#signin:not([hidden])")
    page.focus("#token")
    page.keyboard.insert_text(reviewer_token())
    page.keyboard.press("Enter")
    page.wait_for_selector("#findings tbody tr >> nth=1")
    rows = page.locator("#findings tbody tr")
    assert "42" in rows.nth(0).locator("td").nth(7).inner_text()

    # finding 1: type a comment, Tab to Accept, Enter
    rows.nth(0).locator("input.comment").focus()
    page.keyboard.type("solid nodule, follow up")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Accept"
    page.keyboard.press("Enter")
    page.wait_for_selector("#reviews tbody tr")
    # finding 2: comment, Tab past Accept to Reject, Enter
    page.locator("#findings tbody tr >> nth=1").locator("input.comment").focus()
    page.keyboard.type("vessel")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Reject"
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#reviews tbody tr').length === 2")
    trail = page.locator("#reviews").inner_text()
    assert "dr.house" in trail and "accepted" in trail and "rejected" in trail and "vessel" in trail
    assert "accepted by dr.house" in rows.nth(0).locator("td.review").inner_text()

    # the FHIR Observations, read with the page's own token
    observations = page.evaluate(
        """async (ids) => {
             const token = sessionStorage.getItem('noduleflow.token');
             const read = async (id) => (await fetch('/fhir/Observation/' + id,
               {headers: {Authorization: 'Bearer ' + token}})).json();
             return Promise.all(ids.map(read));
           }""",
        [f"{job}-1", f"{job}-2"],
    )
    first, second = observations
    assert (first["status"], first["meta"]["versionId"]) == ("final", "2")
    assert first["note"][0]["text"] == "Accepted by the radiologist: solid nodule, follow up"
    assert (second["status"], second["meta"]["versionId"]) == ("entered-in-error", "2")
    assert second["note"][0]["authorString"] == "dr.house"
    with db.session() as session:
        audited = list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event == audit.FINDING_REVIEWED, AuditEvent.action == "U"
                )
            )
        )
    assert sorted(e.object_id for e in audited) == [f"{job}-1", f"{job}-2"]
    assert {e.actor for e in audited} == {"dr.house"}

    # layout invariants of the study page, on its screenshot
    shot = tmp_path / "study.png"
    page.screenshot(path=str(shot), full_page=True)
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.width == 1400 and image.height >= 900
    assert ImageStat.Stat(image).stddev[0] > 20  # not blank
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    table = page.locator("#findings").bounding_box()
    for name in ("Accept", "Reject"):
        for i in range(2):
            box = rows.nth(i).get_by_role("button", name=f"{name}").bounding_box()
            assert box is not None and table is not None
            assert table["x"] <= box["x"] and box["x"] + box["width"] <= table["x"] + table["width"]
    accept = rows.nth(0).get_by_role("button", name="Accept").bounding_box()
    reject = rows.nth(0).get_by_role("button", name="Reject").bounding_box()
    assert accept is not None and reject is not None
    assert (
        accept["x"] + accept["width"] <= reject["x"]
        or accept["y"] + accept["height"] <= reject["y"]
    )

    # the viewer link of finding 1, followed with the keyboard
    link = rows.nth(0).locator("a.viewer")
    link.focus()
    with page.context.expect_page() as opened:
        page.keyboard.press("Enter")
    viewer = opened.value
    viewer.wait_for_load_state()
    parts = urlsplit(viewer.url)
    assert (parts.netloc, parts.path) == (urlsplit(base).netloc, "/viewer-stub")
    assert parse_qs(parts.query) == {"StudyInstanceUIDs": [uid], "initialSopInstanceUID": [SOP]}
    viewer.close()

    # the worklist: search by name with the keyboard, sort by a header button, review counts
    page.goto(f"{base}/worklist")
    page.wait_for_selector("#worklist tbody tr >> nth=1")
    failed.clear()  # a study page refresh in flight is cancelled by the navigation
    page.focus("input[name=q]")
    page.keyboard.type("rita")
    page.wait_for_function("() => document.querySelectorAll('#worklist tbody tr').length === 1")
    row = page.locator("#worklist tbody tr").nth(0)
    assert "1 accepted · 1 rejected · 0 open" in row.inner_text()
    assert row.locator("a.viewer").get_attribute("href").startswith(f"{base}/viewer-stub?")
    page.fill("input[name=q]", "")
    page.locator("input[name=q]").dispatch_event("input")
    page.wait_for_function("() => document.querySelectorAll('#worklist tbody tr').length === 2")
    page.locator("#worklist th[data-sort=patient] button").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#worklist tbody tr a').textContent === 'Other Otto'"
    )
    page.keyboard.press("Enter")  # again: descending
    page.wait_for_function(
        "() => document.querySelector('#worklist tbody tr a').textContent === 'Review Rita'"
    )
    assert page.get_attribute("#worklist th[data-sort=patient]", "aria-sort") == "descending"
    assert failed == []
