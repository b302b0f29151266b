"""Push outcome classification against a tiny local HTTP server (real sockets)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.fhir import push
from services.reporter.fhir.push import push_report
from tests.factories.api import finding_spec, make_job, make_study
from tests.services import free_port


class Handler(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list[str] = []
    bodies: list[dict[str, object]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        Handler.seen.append(self.path)
        Handler.bodies.append(body)
        if Handler.mode == "slow":
            time.sleep(1.5)
        status = {"ok": 201, "503": 503, "400": 400, "429": 429, "slow": 201}[Handler.mode]
        reply = (
            {**body, "id": f"srv-{len(Handler.seen)}"}
            if status < 300
            else {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": "nope"}],
            }
        )
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # the client gave up (timeout test): expected


@pytest.fixture
def server() -> Iterator[str]:
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.seen = []
    Handler.bodies = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def job_id(db: Database) -> str:
    with db.session() as session:
        study = make_study(session)
        return make_job(session, study, findings=[finding_spec(), finding_spec()]).job.id


@pytest.mark.parametrize(
    ("mode", "ok", "retry", "status"),
    [
        ("ok", True, False, "200"),
        ("503", False, True, "503"),
        ("429", False, True, "429"),
        ("400", False, False, "400"),
    ],
)
def test_status_classification(
    server: str,
    db: Database,
    settings: Settings,
    job_id: str,
    mode: str,
    ok: bool,
    retry: bool,
    status: str,
) -> None:
    Handler.mode = mode
    outcome = push_report(db, settings.model_copy(update={"fhir_push_url": server}), job_id)
    assert (outcome.ok, outcome.retry, outcome.status) == (ok, retry, status)
    if ok:
        assert Handler.seen[0].startswith("/fhir/Device?identifier=urn:noduleflow:device|")
        report_url = f"/fhir/DiagnosticReport?identifier=urn:noduleflow:report|{job_id}"
        assert Handler.seen[-1] == report_url
        assert len(Handler.seen) == 4 and outcome.detail == "DiagnosticReport/srv-4"


def test_timeout_and_refused_are_retried(
    server: str, db: Database, settings: Settings, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    Handler.mode = "slow"
    monkeypatch.setattr(push, "TIMEOUT", httpx.Timeout(0.3))
    slow = push_report(db, settings.model_copy(update={"fhir_push_url": server}), job_id)
    assert (slow.ok, slow.retry, slow.status) == (False, True, "timeout")
    refused = push_report(
        db, settings.model_copy(update={"fhir_push_url": f"http://127.0.0.1:{free_port()}"}), job_id
    )
    assert (refused.ok, refused.retry, refused.status) == (False, True, "network")


def test_an_amendment_updates_the_report_and_retracts_replaced_findings(
    server: str, db: Database, settings: Settings, job_id: str
) -> None:
    from services.core.db import Job

    Handler.mode = "ok"
    with db.session() as session:
        first = session.get(Job, job_id)
        assert first is not None
        second = make_job(session, first.study, version=2, findings=[finding_spec()]).job.id
    configured = settings.model_copy(update={"fhir_push_url": server})
    for pushed in (second, job_id):  # the older job's (late) delivery sends the same state
        Handler.seen, Handler.bodies = [], []
        assert push_report(db, configured, pushed).ok
        sent = [
            (path.split("?")[0], body.get("status"))
            for path, body in zip(Handler.seen, Handler.bodies)
        ]
        assert sent == [
            ("/fhir/Device", "active"),
            ("/fhir/Observation", "amended"),
            ("/fhir/DiagnosticReport", "amended"),
            ("/fhir/Device", "active"),
            ("/fhir/Observation", "entered-in-error"),
            ("/fhir/Observation", "entered-in-error"),
        ]
        assert Handler.seen[2].endswith(f"urn:noduleflow:report|{job_id}")  # the same report
        assert Handler.seen[4].endswith(f"urn:noduleflow:observation|{job_id}-1")
