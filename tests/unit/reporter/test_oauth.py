"""OAuth 2.0 client credentials for the FHIR push: requests, caching, refresh, 401, errors."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.core.settings import Settings
from services.reporter.fhir import oauth

TOKEN_URL = "http://auth.test/oauth2/token"
SECRET = "s3cr3t+with/odd:chars"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def test_client_secret_basic_encodes_id_and_secret() -> None:
    creds = oauth.ClientCredentials(
        TOKEN_URL, "app 1", oauth.BASIC, scope="system/*.write", secret=SECRET
    )
    request = oauth.token_request(creds, now=1000.0, jti="j")
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == "app%201:s3cr3t%2Bwith%2Fodd%3Achars"
    assert _form(request) == {"grant_type": "client_credentials", "scope": "system/*.write"}


def test_client_secret_post_puts_credentials_in_the_form() -> None:
    creds = oauth.ClientCredentials(TOKEN_URL, "app", oauth.POST, secret=SECRET)
    request = oauth.token_request(creds, now=1000.0, jti="j")
    assert "Authorization" not in request.headers
    assert _form(request) == {
        "grant_type": "client_credentials",
        "client_id": "app",
        "client_secret": SECRET,
    }


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
        (ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ],
)
def test_private_key_jwt_assertion_follows_smart_backend_services(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str
) -> None:
    creds = oauth.ClientCredentials(
        TOKEN_URL, "app", oauth.PRIVATE_KEY_JWT, private_key=_pem(key), key_id="k1"
    )
    request = oauth.token_request(creds, now=1_700_000_000.0, jti="unique-1")
    form = _form(request)
    assert form["client_assertion_type"] == oauth.ASSERTION_TYPE
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == alg and header["kid"] == "k1" and header["typ"] == "JWT"
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=[alg],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "app",
        "sub": "app",
        "aud": TOKEN_URL,
        "iat": 1_700_000_000,
        "exp": 1_700_000_300,
        "jti": "unique-1",
    }


def test_unsuitable_keys_and_missing_secrets_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p256 = ec.generate_private_key(ec.SECP256R1())
    for pem in (b"", b"not a key", _pem(small), _pem(p256)):
        with pytest.raises(ValueError, match="private key"):
            oauth.ClientCredentials(TOKEN_URL, "app", oauth.PRIVATE_KEY_JWT, private_key=pem)
    with pytest.raises(ValueError, match="client secret"):
        oauth.ClientCredentials(TOKEN_URL, "app", oauth.BASIC)
    with pytest.raises(ValueError, match="client id"):
        oauth.ClientCredentials(TOKEN_URL, "", oauth.BASIC, secret=SECRET)
    with pytest.raises(ValueError, match="one of"):
        oauth.ClientCredentials(TOKEN_URL, "app", "password", secret=SECRET)


def test_settings_choose_the_method_and_never_show_the_secret(tmp_path: Path) -> None:
    settings = Settings(
        fhir_push_token_url=TOKEN_URL, fhir_push_client_id="app", fhir_push_client_secret=SECRET
    )
    assert SECRET not in repr(settings)
    creds = oauth.ClientCredentials.from_settings(settings)
    assert creds is not None and creds.method == oauth.BASIC and SECRET not in repr(creds)
    key = tmp_path / "key.pem"
    key.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    keyed = settings.model_copy(update={"fhir_push_private_key": key})
    assert oauth.ClientCredentials.from_settings(keyed).method == oauth.PRIVATE_KEY_JWT  # type: ignore[union-attr]
    assert oauth.ClientCredentials.from_settings(Settings()) is None
    missing = settings.model_copy(update={"fhir_push_private_key": tmp_path / "nope.pem"})
    with pytest.raises(ValueError, match="cannot be read"):
        oauth.ClientCredentials.from_settings(missing)


class FakeServer:
    """A token endpoint and a resource server in one MockTransport."""

    def __init__(self, *, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.token_status = 200
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            if self.token_status != 200:
                body = {"error": "invalid_client", "error_description": f"bad secret {SECRET}"}
                return httpx.Response(self.token_status, json=body)
            token = f"tok{len(self.issued) + 1}"
            self.issued.append(token)
            body2 = {"access_token": token, "token_type": "bearer", "expires_in": self.lifetime}
            return httpx.Response(200, json=body2)
        auth = request.headers.get("Authorization", "")
        self.seen.append(auth)
        token = auth.removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return httpx.Response(401, json={"resourceType": "OperationOutcome"})
        return httpx.Response(200, json={"ok": True})


def _client(server: FakeServer, auth: httpx.Auth) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(server), auth=auth)


def test_token_is_cached_then_refreshed_before_expiry() -> None:
    now = [0.0]
    server = FakeServer(lifetime=100)
    creds = oauth.ClientCredentials(TOKEN_URL, "app", oauth.BASIC, secret=SECRET)
    auth = oauth.ClientCredentialsAuth(creds, clock=lambda: now[0])
    with _client(server, auth) as client:
        assert client.get("http://fhir.test/x").status_code == 200
        now[0] = 79.0  # refreshed a fifth of its life (20 s) before expiry
        assert client.get("http://fhir.test/x").status_code == 200
        assert server.issued == ["tok1"]
        now[0] = 80.5
        assert client.get("http://fhir.test/x").status_code == 200
    assert server.issued == ["tok1", "tok2"]
    assert server.seen == ["Bearer tok1", "Bearer tok1", "Bearer tok2"]


def test_a_401_refreshes_once_and_retries() -> None:
    server = FakeServer()
    creds = oauth.ClientCredentials(TOKEN_URL, "app", oauth.POST, secret=SECRET)
    auth = oauth.ClientCredentialsAuth(creds)
    with _client(server, auth) as client:
        assert client.get("http://fhir.test/x").status_code == 200
        server.revoked.add("tok1")
        assert client.get("http://fhir.test/x").status_code == 200
        assert server.seen == ["Bearer tok1", "Bearer tok1", "Bearer tok2"]
        server.revoked.add("tok2")
        server.issued.append("never")  # the server now refuses every token: one retry only
        server.revoked.update({"tok3", "tok4"})
        assert client.get("http://fhir.test/x").status_code == 401
    assert auth.fetched == 3


def test_token_endpoint_errors_are_classified_without_secrets() -> None:
    server = FakeServer()
    server.token_status = 401
    creds = oauth.ClientCredentials(TOKEN_URL, "app", oauth.POST, secret=SECRET)
    with _client(server, oauth.ClientCredentialsAuth(creds)) as client:
        with pytest.raises(oauth.TokenRefused) as refused:
            client.get("http://fhir.test/x")
        assert str(refused.value) == "token endpoint answered 401 (invalid_client)"
        assert SECRET not in str(refused.value)
        server.token_status = 503
        with pytest.raises(oauth.TokenUnavailable):
            client.get("http://fhir.test/x")


def test_token_response_parsing() -> None:
    ok = httpx.Response(200, json={"access_token": "a", "token_type": "Bearer"})
    assert oauth.parse_token(ok, now=10.0).refresh_at == 10.0 + 300 - 60
    for body in ({"token_type": "Bearer"}, "not json"):
        response = httpx.Response(200, json=body)
        with pytest.raises(oauth.TokenError):
            oauth.parse_token(response, now=0.0)
    mac = httpx.Response(200, json={"access_token": "a", "token_type": "mac"})
    with pytest.raises(oauth.TokenRefused):
        oauth.parse_token(mac, now=0.0)
    hidden = httpx.Response(200, json={"access_token": "tok-value-42", "token_type": "Bearer"})
    assert "tok-value-42" not in repr(oauth.parse_token(hidden, now=0.0))
