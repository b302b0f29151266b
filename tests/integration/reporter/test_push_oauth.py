"""Authenticated FHIR push to the Medplum test server with real client applications.

The server requires bearer tokens from its ``/oauth2/token`` endpoint; clients are made
through its admin API. Covers client_secret_basic/post and private_key_jwt (RS384, ES384),
a report created then amended, proactive refresh, a token expired or revoked on the server
(401 → one refresh → retry), refused credentials, and no secret in any log line.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr
from sqlalchemy import select

from services.core.db import AuditEvent, Database, Delivery
from services.core.settings import Settings
from services.reporter.delivery.dispatch import Dispatcher, upsert_delivery
from services.reporter.delivery.senders import fhir_sender, retry_policy
from services.reporter.fhir.oauth import ClientCredentialsAuth, auth_from_settings
from services.reporter.fhir.push import push_report
from tests.factories.api import finding_spec, make_job, make_study
from tests.fhirserver.medplum import admin, create_client, running_medplum, server_root
from tests.services import free_port

pytestmark = pytest.mark.integration

ADMIN = secrets.token_hex(16)
TTL = 3  # seconds: short, so that expiry happens within a test


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("medplum") / "server.log"
    with running_medplum(log, admin_token=ADMIN, token_ttl=TTL) as base:
        yield base


class Jwks:
    """A JWKS endpoint over HTTP for the private_key_jwt clients' public keys."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    endpoint = Jwks()
    yield endpoint
    endpoint.server.shutdown()


def _secret_settings(
    settings: Settings, medplum: str, client: dict[str, Any], auth: str
) -> Settings:
    return settings.model_copy(
        update={
            "fhir_push_url": medplum,
            "fhir_push_token_url": f"{server_root(medplum)}/oauth2/token",
            "fhir_push_client_id": client["id"],
            "fhir_push_client_secret": SecretStr(client["secret"]),
            "fhir_push_auth": auth,
            "fhir_push_scope": "system/*.write",
        }
    )


def _read(medplum: str, auth: httpx.Auth, reference: str) -> dict[str, Any]:
    """A resource the push stored (``Type/id``, as the push reports it), read with a token."""
    response = httpx.get(f"{medplum}/{reference}", auth=auth)
    assert response.status_code == 200, response.text
    resource: dict[str, Any] = response.json()
    return resource


def _two_versions(db: Database, patient: str) -> tuple[str, str]:
    with db.session() as session:
        study = make_study(session, patient_id=patient, accession=f"ACC-{patient}")
        first = make_job(session, study, findings=[finding_spec()]).job.id
        second = make_job(
            session, study, version=2, findings=[finding_spec(), finding_spec(lung_rads="4B")]
        ).job.id
    return first, second


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_secret_push_creates_then_amends(
    medplum: str, db: Database, settings: Settings, method: str
) -> None:
    assert httpx.get(f"{medplum}/DiagnosticReport").status_code == 401  # auth is on
    client = create_client(medplum, ADMIN, f"noduleflow-{method}")
    settings = _secret_settings(settings, medplum, client, method)
    auth = auth_from_settings(settings)
    assert auth is not None
    first, second = _two_versions(db, f"OAUTH-{method[-4:]}")
    before = admin(medplum, ADMIN, "GET", "stats")

    created = push_report(db, settings, first, auth=auth)
    assert created.ok, created
    amended = push_report(db, settings, second, auth=auth)
    assert amended.ok, amended

    after = admin(medplum, ADMIN, "GET", "stats")
    assert after["issued"] - before["issued"] == 1  # one token for both pushes
    assert after["unauthorized"] == before["unauthorized"]
    new = _read(medplum, auth, amended.detail)
    assert new["status"] == "amended" and len(new["result"]) == 2
    assert new["subject"]["identifier"]["value"] == f"OAUTH-{method[-4:]}"
    assert _read(medplum, auth, created.detail)["resourceType"] == "DiagnosticReport"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_private_key_jwt_push(
    medplum: str, jwks: Jwks, db: Database, settings: Settings, tmp_path: Path, alg: str
) -> None:
    """SMART Backend Services: the server checks the assertion against the client's JWKS."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    kid = f"key-{alg}"
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    public = algorithm.to_jwk(key.public_key(), as_dict=True)  # type: ignore[attr-defined]
    jwks.keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
    client = create_client(medplum, ADMIN, f"backend-{alg}", jwks_uri=jwks.url)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(_pem(key))
    settings = settings.model_copy(
        update={
            "fhir_push_url": medplum,
            "fhir_push_token_url": f"{server_root(medplum)}/oauth2/token",
            "fhir_push_client_id": client["id"],
            "fhir_push_private_key": key_file,
            "fhir_push_key_id": kid,
        }
    )
    auth = auth_from_settings(settings)
    assert auth is not None and auth.creds.method == "private_key_jwt"
    first, second = _two_versions(db, f"SMART-{alg}")
    assert push_report(db, settings, first, auth=auth).ok
    amended = push_report(db, settings, second, auth=auth)
    assert amended.ok, amended
    assert _read(medplum, auth, amended.detail)["status"] == "amended"

    stranger = tmp_path / "other.pem"  # a key the client's JWKS does not hold
    stranger.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    wrong = settings.model_copy(
        update={"fhir_push_private_key": stranger, "fhir_push_key_id": "unknown"}
    )
    refused = push_report(db, wrong, first, auth=auth_from_settings(wrong))
    assert not refused.ok and not refused.retry and refused.status == "token"
    assert "invalid_client" in refused.detail


def test_expired_and_revoked_tokens_are_replaced(
    medplum: str, db: Database, settings: Settings
) -> None:
    client = create_client(medplum, ADMIN, "noduleflow-expiry")
    settings = _secret_settings(settings, medplum, client, "client_secret_basic")
    first, second = _two_versions(db, "EXPIRY")
    auth = auth_from_settings(settings)
    assert auth is not None

    def counts() -> tuple[int, int]:
        stats = admin(medplum, ADMIN, "GET", "stats")
        return stats["issued"], stats["unauthorized"]

    issued, unauthorized = counts()
    assert push_report(db, settings, first, auth=auth).ok
    time.sleep(TTL * 0.85)  # past the refresh point (a fifth of the life before expiry)
    assert push_report(db, settings, second, auth=auth).ok
    assert counts() == (issued + 2, unauthorized)  # refreshed before it expired: no 401

    admin(medplum, ADMIN, "POST", "revoke-tokens")  # the server forgets every token
    assert push_report(db, settings, second, auth=auth).ok
    assert counts() == (issued + 3, unauthorized + 1)  # one 401, one new token, one retry

    frozen = ClientCredentialsAuth(auth.creds, clock=lambda: 0.0)  # never refreshes by itself
    assert push_report(db, settings, first, auth=frozen).ok
    time.sleep(TTL + 0.5)  # the server's token has expired; the client does not know
    assert push_report(db, settings, first, auth=frozen).ok
    assert counts() == (issued + 5, unauthorized + 2)


def test_secrets_never_reach_the_logs(
    medplum: str,
    jwks: Jwks,
    db: Database,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reporter's own delivery path, logging everything at DEBUG to a file: the client
    secret, the tokens and the private key appear in no line, delivered or refused."""
    client = create_client(medplum, ADMIN, "noduleflow-logs")
    good = _secret_settings(settings, medplum, client, "client_secret_post")
    log_file = tmp_path / "reporter.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    bad_secret = secrets.token_hex(32)
    try:
        with db.session() as session:
            study = make_study(session, patient_id="LOGS-1")
            job_id = make_job(session, study, findings=[finding_spec()]).job.id
        for case, secret in (("good", client["secret"]), ("bad", bad_secret)):
            settings_case = good.model_copy(update={"fhir_push_client_secret": SecretStr(secret)})
            target = f"{medplum}#{case}"
            with db.session() as session:
                upsert_delivery(session, job_id=job_id, kind="fhir", target=target)
            auth = auth_from_settings(settings_case)
            assert auth is not None
            senders = {"fhir": fhir_sender(db, settings_case, auth=auth)}
            Dispatcher(db, senders, retry_policy(settings_case)).dispatch_once()
            tokens += [auth._token.value] if auth._token else []
    finally:
        root.removeHandler(handler)
        handler.close()
    with db.session() as session:
        rows = {r.target.rpartition("#")[2]: r for r in session.scalars(select(Delivery))}
        audits = " ".join(a.detail for a in session.scalars(select(AuditEvent)))
    assert rows["good"].state == "delivered", rows["good"].last_error
    assert rows["bad"].state == "failed" and "invalid_client" in rows["bad"].last_error
    assert tokens, "the good push fetched a token"
    text = log_file.read_text() + caplog.text + audits
    text += " ".join(r.last_error for r in rows.values())
    assert "event=delivered" in text and "event=delivery_failed" in text
    for secret in (client["secret"], bad_secret, *tokens):
        assert secret not in text
