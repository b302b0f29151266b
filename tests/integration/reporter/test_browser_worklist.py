"""The worklist and study pages in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import (
    finding_spec,
    make_delivery,
    make_job,
    make_study,
    running_api,
    seed_reports,
)
from tests.services import require

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-token-0123456789abcdef"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE_NAME = "<img src=x onerror=alert(1)>^Mallory"


def key_png() -> bytes:
    image = Image.new("L", (128, 128), 20)
    ImageDraw.Draw(image).ellipse((50, 50, 78, 78), outline=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def browser() -> Iterator[object]:
    require(Path(CHROMIUM).exists() or shutil.which("chromium") is not None, "Debian chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def site(db: Database, settings: Settings) -> Iterator[tuple[str, dict, Database]]:
    with db.session() as session:
        seeded = seed_reports(session)
        odd = make_study(session, patient_id="PAT-X", patient_name=HOSTILE_NAME)
        make_job(session, odd, findings=[finding_spec(diameter_mm=5.0, lung_rads="2")])
        make_delivery(
            session, seeded["b1"].job, kind="sr", state="delivered", target="ORTHANC@127.0.0.1:4242"
        )
        make_delivery(
            session,
            seeded["b1"].job,
            kind="fhir",
            state="delivered",
            target="http://his.example/fhir",
        )
    uid = seeded["b1"].study.study_instance_uid
    folder = settings.outbox_dir / uid / "v1"
    folder.mkdir(parents=True)
    (folder / "key-1.png").write_bytes(key_png())
    configured = settings.model_copy(update={"api_tokens": [TOKEN]})
    with running_api(create_app(configured, db)) as base:
        yield base, seeded, db


def test_worklist_and_study_page(browser, site, tmp_path: Path) -> None:
    base, seeded, db = site
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))

    page.goto(f"{base}/worklist")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.locator("#worklist tbody tr").count() == 0  # no data before sign-in
    page.fill("#token", TOKEN)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#worklist tbody tr")
    rows = page.locator("#worklist tbody tr")
    assert rows.count() == 6
    assert not page.is_visible("#signin")
    first = rows.nth(0)
    assert first.locator(".rads").inner_text() == "4B"
    assert "Baker Bob" in first.inner_text()
    assert first.locator(".rads").evaluate("e => getComputedStyle(e).backgroundColor") != rows.nth(
        3
    ).locator(".rads").evaluate("e => getComputedStyle(e).backgroundColor")
    categories = [rows.nth(i).locator(".rads").inner_text() for i in range(rows.count())]
    assert categories[:4] == ["4B", "4A", "2", "1"]
    assert HOSTILE_NAME.replace("^", " ") in page.locator("#worklist").inner_text()
    page.screenshot(path=str(tmp_path / "worklist.png"), full_page=True)

    # the page refreshes by itself: a new, more suspicious study moves to the top
    with db.session() as session:
        urgent = make_study(session, patient_id="PAT-U", patient_name="Urgent^Una")
        make_job(session, urgent, findings=[finding_spec(diameter_mm=31.0, lung_rads="4X")])
    page.wait_for_function(
        "() => document.querySelector('#worklist tbody tr .rads').textContent === '4X'",
        timeout=15_000,
    )
    assert "Urgent Una" in rows.nth(0).inner_text()

    page.select_option("select[name=min_lung_rads]", "4A")
    page.wait_for_function("() => document.querySelectorAll('#worklist tbody tr').length === 3")

    assert failed == []
    page.click(f"a[href='/studies/{seeded['b1'].study.study_instance_uid}']")
    page.wait_for_selector("#findings tbody tr img.key-image")
    failed.clear()  # a worklist refresh in flight is cancelled by the navigation
    page.wait_for_function("() => document.querySelector('img.key-image').naturalWidth === 128")
    assert "ACC-B1" in page.locator("#study-facts").inner_text()
    assert "16.0 mm" in page.locator("#findings").inner_text()
    deliveries = page.locator("#deliveries").inner_text()
    assert "ORTHANC@127.0.0.1:4242" in deliveries and "http://his.example/fhir" in deliveries
    report = f"/fhir/DiagnosticReport/{seeded['b1'].job.id}"
    assert report in page.locator("#fhir-link").inner_text()
    page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
    assert (tmp_path / "study.png").stat().st_size > 10_000
    assert dialogs == [] and failed == []
