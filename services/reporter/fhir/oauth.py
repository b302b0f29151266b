"""OAuth 2.0 client credentials for the FHIR push (RFC 6749 §4.4), as an ``httpx.Auth``.

Client authentication at the token endpoint, one of:

* ``client_secret_basic``: HTTP Basic with the URL-encoded id and secret (RFC 6749 §2.3.1);
* ``client_secret_post``: ``client_id`` and ``client_secret`` in the form body;
* ``private_key_jwt``: a signed JWT assertion (RFC 7523; SMART Backend Services, FHIR
  ``smart-app-launch`` "client-confidential-asymmetric"): ``iss`` = ``sub`` = client id,
  ``aud`` = token URL, ``exp`` at most five minutes ahead, a fresh ``jti``; RS384 for an RSA
  key, ES384 for an EC P-384 key.

The access token is cached and fetched again shortly before it expires. A 401 from the FHIR
server drops the cached token, fetches a new one and retries the request once. Secrets (the
client secret, the private key, tokens, assertions) never appear in a log line or an error
message: errors quote only the token endpoint's status and its ``error`` code.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from services.core.errors import NoduleflowError, PermanentError, TransientError
from services.core.settings import Settings

BASIC, POST, PRIVATE_KEY_JWT = "client_secret_basic", "client_secret_post", "private_key_jwt"
METHODS = (BASIC, POST, PRIVATE_KEY_JWT)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 300  # SMART Backend Services: exp no more than five minutes ahead
DEFAULT_TOKEN_SECONDS = 300  # when the token response has no expires_in


class TokenError(NoduleflowError):
    """The token endpoint gave no usable token; ``status`` is what a delivery row records."""

    retry = False

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message, code=f"oauth-{status}")
        self.status = status


class TokenUnavailable(TokenError, TransientError):
    """Network trouble, a timeout, 429 or 5xx at the token endpoint: try again later."""

    retry = True


class TokenRefused(TokenError, PermanentError):
    """The token endpoint refused the client (bad credentials, unknown client, bad scope)."""


@dataclass(frozen=True)
class ClientCredentials:
    """How to ask for a token; ``secret`` and ``private_key`` are never shown by ``repr``."""

    token_url: str
    client_id: str
    method: str
    scope: str = ""
    secret: str = field(default="", repr=False)
    private_key: bytes = field(default=b"", repr=False)
    key_id: str = ""

    def __post_init__(self) -> None:
        if not self.token_url.startswith(("https://", "http://")):
            raise ValueError("FHIR push token URL must be an http(s) URL")
        if not self.client_id:
            raise ValueError("FHIR push client credentials need a client id")
        if self.method not in METHODS:
            raise ValueError(f"FHIR push auth method must be one of {', '.join(METHODS)}")
        if self.method == PRIVATE_KEY_JWT:
            signing_algorithm(self.private_key)  # refuses a missing or unsuitable key now
        elif not self.secret:
            raise ValueError(f"FHIR push auth {self.method} needs a client secret")

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientCredentials | None:
        """The configured credentials, or None when no token URL is set."""
        if not settings.fhir_push_token_url:
            return None
        key_file = settings.fhir_push_private_key
        secret = settings.fhir_push_client_secret
        method = settings.fhir_push_auth or (PRIVATE_KEY_JWT if key_file else BASIC)
        try:
            key = key_file.read_bytes() if key_file is not None else b""
        except OSError as exc:
            raise ValueError(f"FHIR push private key file cannot be read: {exc.strerror}") from exc
        return cls(
            token_url=settings.fhir_push_token_url,
            client_id=settings.fhir_push_client_id,
            method=method,
            scope=settings.fhir_push_scope,
            secret=secret.get_secret_value() if secret is not None else "",
            private_key=key,
            key_id=settings.fhir_push_key_id,
        )


def signing_algorithm(pem: bytes) -> str:
    """RS384 for an RSA key (2048 bits or more), ES384 for an EC P-384 key; else ValueError."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("FHIR push private key is not an unencrypted PEM private key") from exc
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    raise ValueError("FHIR push private key must be RSA (2048 bits or more) or EC P-384")


def assertion_claims(client_id: str, token_url: str, *, now: float, jti: str) -> dict[str, Any]:
    """The claims of a client assertion (RFC 7523 §3; SMART Backend Services)."""
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": int(now),
        "exp": int(now) + ASSERTION_SECONDS,
        "jti": jti,
    }


def token_request(creds: ClientCredentials, *, now: float, jti: str) -> httpx.Request:
    """The POST to the token endpoint for ``creds`` (pure apart from signing)."""
    form = {"grant_type": "client_credentials"}
    if creds.scope:
        form["scope"] = creds.scope
    headers = {"Accept": "application/json"}
    if creds.method == BASIC:
        pair = f"{quote(creds.client_id, safe='')}:{quote(creds.secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif creds.method == POST:
        form |= {"client_id": creds.client_id, "client_secret": creds.secret}
    else:
        claims = assertion_claims(creds.client_id, creds.token_url, now=now, jti=jti)
        header = {"typ": "JWT", **({"kid": creds.key_id} if creds.key_id else {})}
        assertion = jwt.encode(
            claims,
            load_pem_private_key(creds.private_key, password=None),  # type: ignore[arg-type]
            algorithm=signing_algorithm(creds.private_key),
            headers=header,
        )
        form |= {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    return httpx.Request("POST", creds.token_url, data=form, headers=headers)


@dataclass(frozen=True)
class Token:
    """An access token and the monotonic time after which it is fetched again."""

    value: str = field(repr=False)
    refresh_at: float


def parse_token(response: httpx.Response, *, now: float) -> Token:
    """The token in a token endpoint response, refreshed a fifth of its life (at most a
    minute) before it expires; :class:`TokenError` for anything else."""
    status = response.status_code
    if status != 200:
        error = _error_code(response)
        message = f"token endpoint answered {status}" + (f" ({error})" if error else "")
        if status >= 500 or status == 429:
            raise TokenUnavailable(message, status=str(status))
        raise TokenRefused(message, status=str(status))
    try:
        body = response.json()
        value = body["access_token"]
        kind = str(body.get("token_type", "Bearer"))
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenUnavailable(
            "token endpoint answer has no access token", status="bad-token"
        ) from exc
    if not isinstance(value, str) or not value or kind.lower() != "bearer":
        raise TokenRefused("token endpoint gave no bearer token", status="bad-token")
    return Token(value, now + lifetime - min(60.0, lifetime / 5))


def _error_code(response: httpx.Response) -> str:
    """The RFC 6749 §5.2 ``error`` code only (descriptions may quote what was sent)."""
    try:
        code = response.json().get("error", "")
    except (ValueError, AttributeError):
        return ""
    return code[:64] if isinstance(code, str) and code.replace("_", "").isalnum() else ""


class ClientCredentialsAuth(httpx.Auth):
    """Bearer tokens from the token endpoint, cached across requests and pushes."""

    requires_response_body = True

    def __init__(
        self, creds: ClientCredentials, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.creds = creds
        self.clock = clock
        self._token: Token | None = None
        self._lock = threading.Lock()
        self.fetched = 0  # tokens fetched so far (for metrics and tests)

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth({self.creds!r})"

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        if token is None:
            token = yield from self._fetch()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code != 401:
            return
        self.invalidate()  # revoked or expired early: one new token, one retry
        token = yield from self._fetch()
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    def _current(self) -> Token | None:
        with self._lock:
            token = self._token
        return token if token is not None and self.clock() < token.refresh_at else None

    def _fetch(self) -> Generator[httpx.Request, httpx.Response, Token]:
        started = self.clock()
        response = yield token_request(self.creds, now=time.time(), jti=uuid.uuid4().hex)
        token = parse_token(response, now=started)
        with self._lock:
            self._token = token
            self.fetched += 1
        return token


def auth_from_settings(settings: Settings) -> ClientCredentialsAuth | None:
    """The push's auth when a token URL is configured (ValueError for a bad configuration)."""
    creds = ClientCredentials.from_settings(settings)
    return ClientCredentialsAuth(creds) if creds is not None else None
