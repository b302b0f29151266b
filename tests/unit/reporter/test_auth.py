from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.core.db import AuditEvent, Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.api.auth import allows
from tests.factories.api import Made, seed_reports

STATIC = "s3cr3t-static-token-0123456789"
AUD, ISS = "https://noduleflow.test/fhir", "https://idp.test"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY, OTHER = _key(), _key()
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def token(scope: str = "system/*.rs", *, key: rsa.RSAPrivateKey = KEY, **claims: object) -> str:
    now = int(time.time())
    body = {
        "sub": "svc-his",
        "aud": AUD,
        "iss": ISS,
        "iat": now,
        "exp": now + 300,
        "scope": scope,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256")


@pytest.fixture
def seeded(db: Database) -> dict[str, Made]:
    with db.session() as session:
        return seed_reports(session)


@pytest.fixture
def client(db: Database, settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(PUBLIC_PEM)
    configured = settings.model_copy(
        update={
            "api_tokens": [STATIC],
            "jwt_public_key": key_file,
            "jwt_audience": AUD,
            "jwt_issuer": ISS,
        }
    )
    with TestClient(
        create_app(configured, db), client=("10.1.2.3", 4000), raise_server_exceptions=False
    ) as c:
        yield c


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def events(db: Database, code: str) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == code)))


def test_no_token_is_401_with_challenge_and_audit(client: TestClient, db: Database) -> None:
    res = client.get("/fhir/DiagnosticReport")
    assert res.status_code == 401
    assert res.headers["www-authenticate"].startswith("Bearer")
    assert res.json()["resourceType"] == "OperationOutcome"
    assert "entry" not in res.json()
    failures = events(db, "110114")
    assert len(failures) == 1 and failures[0].outcome == "4" and failures[0].source == "10.1.2.3"


def test_static_token_reads_and_is_audited(client: TestClient, db: Database, seeded) -> None:
    res = client.get("/fhir/DiagnosticReport?status=final", headers=bearer(STATIC))
    assert res.status_code == 200 and res.json()["total"] == 2  # the third one is amended
    job = seeded["b1"].job.id
    assert client.get(f"/fhir/DiagnosticReport/{job}", headers=bearer(STATIC)).status_code == 200
    query = events(db, "110112")
    assert len(query) == 1 and query[0].actor.startswith("token-")
    assert "status" in query[0].detail and "PAT" not in query[0].detail
    reads = events(db, "110110")
    assert [(r.object_type, r.object_id) for r in reads] == [("DiagnosticReport", job)]


@pytest.mark.parametrize(
    "bad",
    [
        "expired",
        "signature",
        "none",
        "hs256-public",
        "audience",
        "issuer",
        "nbf",
        "garbage",
        "no-exp",
    ],
)
def test_bad_jwts_are_401(client: TestClient, bad: str) -> None:
    now = int(time.time())
    value = {
        "expired": lambda: token(exp=now - 120, iat=now - 600),
        "signature": lambda: token(key=OTHER),
        "none": lambda: jwt.encode(
            {"sub": "x", "aud": AUD, "iss": ISS, "exp": now + 60, "scope": "system/*.rs"},
            None,
            algorithm="none",
        ),
        "hs256-public": lambda: _hs256_with_public_key(now),
        "audience": lambda: token(aud="https://someone-else"),
        "issuer": lambda: token(iss="https://evil.test"),
        "nbf": lambda: token(nbf=now + 3600),
        "garbage": lambda: "not.a.jwt",
        "no-exp": lambda: jwt.encode(
            {"sub": "x", "aud": AUD, "iss": ISS, "scope": "system/*.rs"}, KEY, algorithm="RS256"
        ),
    }[bad]()
    res = client.get("/fhir/DiagnosticReport", headers=bearer(value))
    assert res.status_code == 401, bad
    assert res.json()["issue"][0]["diagnostics"] == "Authentication required: a valid bearer token"


def _hs256_with_public_key(now: int) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(
        json.dumps(
            {"sub": "x", "aud": AUD, "iss": ISS, "exp": now + 60, "scope": "system/*.rs"}
        ).encode()
    )
    sig = hmac.new(PUBLIC_PEM, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_scopes(client: TestClient, db: Database, seeded) -> None:
    reports_only = bearer(token("system/DiagnosticReport.rs"))
    assert client.get("/fhir/DiagnosticReport", headers=reports_only).status_code == 200
    patient = client.get(f"/fhir/Patient/{seeded['b1'].study.patient_key}", headers=reports_only)
    assert patient.status_code == 403 and patient.json()["issue"][0]["code"] == "forbidden"
    include = client.get(
        "/fhir/DiagnosticReport?_include=DiagnosticReport:result", headers=reports_only
    )
    assert include.status_code == 403
    read_only = bearer(token("system/DiagnosticReport.r"))
    assert client.get("/fhir/DiagnosticReport", headers=read_only).status_code == 403
    assert client.get("/api/worklist", headers=reports_only).status_code == 403
    assert client.get("/api/worklist", headers=bearer(token("system/*.rs"))).status_code == 200
    assert (
        client.get("/fhir/DiagnosticReport", headers=bearer(token("patient/*.rs"))).status_code
        == 403
    )
    alerts = events(db, "110113")
    assert len(alerts) == 5 and {a.actor for a in alerts} == {"svc-his"}


def test_writes_are_refused_even_with_scope(client: TestClient) -> None:
    res = client.post("/fhir/DiagnosticReport", json={}, headers=bearer(token("system/*.cruds")))
    assert res.status_code == 405


def test_open_mode_is_loopback_only(db: Database, settings: Settings) -> None:
    with TestClient(
        create_app(settings, db), client=("192.168.1.5", 1), raise_server_exceptions=False
    ) as remote:
        assert remote.get("/fhir/DiagnosticReport").status_code == 401
    with TestClient(create_app(settings, db), client=("127.0.0.1", 1)) as local:
        assert local.get("/fhir/DiagnosticReport").status_code == 200
    with pytest.raises(RuntimeError, match="refusing to start"):
        create_app(settings.model_copy(update={"api_host": "0.0.0.0"}), db)


def test_public_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/worklist").status_code == 200  # the shell holds no patient data
    assert client.get("/api/worklist").status_code == 401


def test_allows() -> None:
    assert allows(["system/*.rs"], "Patient", "r")
    assert allows(["user/Observation.read"], "Observation", "s")
    assert not allows(["system/Observation.r"], "Observation", "s")
    assert not allows(["system/Observation.rs?category=x"], "Observation", "r")
    assert not allows(["patient/*.rs", "openid", "system/Device.rs"], "Patient", "r")


def test_jwks_with_key_rotation(db: Database, settings: Settings, tmp_path: Path) -> None:
    import json

    from jwt.algorithms import RSAAlgorithm

    jwks = {
        "keys": [
            {**json.loads(RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "new", "use": "sig"},
            {**json.loads(RSAAlgorithm.to_jwk(OTHER.public_key())), "kid": "old", "use": "sig"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # symmetric keys are ignored
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    configured = settings.model_copy(
        update={"jwt_public_key": path, "jwt_audience": AUD, "jwt_issuer": ISS}
    )
    with TestClient(create_app(configured, db), client=("10.0.0.9", 1)) as c:
        for kid, key in (("new", KEY), ("old", OTHER)):
            now = int(time.time())
            value = jwt.encode(
                {"sub": "s", "aud": AUD, "iss": ISS, "exp": now + 60, "scope": "system/*.rs"},
                key,
                algorithm="RS256",
                headers={"kid": kid},
            )
            assert c.get("/fhir/DiagnosticReport", headers=bearer(value)).status_code == 200
        crossed = jwt.encode(
            {"sub": "s", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 60},
            OTHER,
            algorithm="RS256",
            headers={"kid": "new"},
        )
        assert c.get("/fhir/DiagnosticReport", headers=bearer(crossed)).status_code == 401
        hmac_token = jwt.encode(
            {"sub": "s", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 60},
            "secret",
            algorithm="HS256",
            headers={"kid": "hmac"},
        )
        assert c.get("/fhir/DiagnosticReport", headers=bearer(hmac_token)).status_code == 401


def test_metrics_need_a_token_off_loopback_and_hsts_on_https(
    db: Database, settings: Settings
) -> None:
    exposed = settings.model_copy(
        update={
            "api_host": "0.0.0.0",
            "api_tokens": [STATIC],
            "public_base_url": "https://nf.example",
        }
    )
    with TestClient(
        create_app(exposed, db), client=("10.0.0.7", 1), raise_server_exceptions=False
    ) as c:
        assert c.get("/metrics").status_code == 401
        res = c.get("/metrics", headers=bearer(STATIC))
        assert res.status_code == 200 and "noduleflow_database_up" in res.text
        assert res.headers["strict-transport-security"].startswith("max-age=")
        assert c.get("/healthz").status_code == 200
        links = c.get("/fhir/DiagnosticReport", headers=bearer(STATIC)).json()["link"]
        assert links[0]["url"].startswith("https://nf.example/fhir/DiagnosticReport?")
