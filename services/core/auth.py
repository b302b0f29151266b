"""Bearer-token access: static tokens or JWTs, SMART v2 style scopes per resource type.

Shared by the reporter's API and the receiver's DICOMweb endpoint (STOW-RS), which needs
create on ImagingStudy (``system/ImagingStudy.c``, or SMART v1 ``…ImagingStudy.write``).

- Static tokens (``API_TOKENS``) grant read and search on everything (``system/*.rs``);
  ``STOW_TOKENS`` grant only storing studies (``system/ImagingStudy.c``).
- JWTs are verified against ``JWT_PUBLIC_KEY``: a PEM public key or a JWKS document (keys picked
  by ``kid``, for rotation). RSA/EC/Ed25519 only, with asymmetric algorithms only,
  so ``alg: none`` and HS256-signed-with-the-public-key are refused), with the configured
  audience (required) and issuer, ``exp`` required and ``nbf`` honoured. Scopes come from the
  ``scope`` claim (space separated) or ``scp`` (list). ``system/`` and ``user/`` scopes apply;
  ``patient/`` scopes and scopes with ``?`` constraints are not supported and grant nothing.
- Nothing configured: open access (read, and storing studies), allowed only when the
  service listens on a loopback address (a warning is logged) and only for loopback
  clients; otherwise the service refuses to start.

Every failure gives the same 401 message, whichever check failed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from services.core.errors import PermanentError
from services.core.settings import Settings

log = logging.getLogger(__name__)

FULL_READ = ("system/*.rs",)
STORE_STUDIES = ("system/ImagingStudy.c",)
_RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_EC_ALGS = ["ES256", "ES384", "ES512"]


def _algorithms_for(key: Any) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGS
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ["EdDSA"]
    return []


class AuthError(PermanentError):
    """Authentication failed (401); the reason is for logs only."""

    code = "unauthorised"


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: tuple[str, ...]
    method: str  # token | jwt | open


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allows(scopes: Iterable[str], resource_type: str, interaction: str) -> bool:
    """Whether ``scopes`` permit ``interaction`` ("r" read, "s" search, "c" create, "u"
    update, "d" delete) on ``resource_type``. SMART v1 ``read`` grants r and s only,
    ``write`` c, u and d, ``*`` all."""
    for scope in scopes:
        context, _, rest = scope.partition("/")
        if context not in ("system", "user") or "?" in rest:
            continue
        rtype, _, permission = rest.partition(".")
        if rtype not in ("*", resource_type):
            continue
        if permission == "*":  # SMART v1
            return True
        if permission in ("read", "write"):
            return interaction in ("rs" if permission == "read" else "cud")
        if permission and set(permission) <= set("cruds") and interaction in permission:
            return True
    return False


class Authenticator:
    """Checks bearer credentials; built once from settings."""

    def __init__(self, settings: Settings, *, host: str | None = None) -> None:
        """``host``: the address the service listens on (``API_HOST`` unless given)."""
        host = settings.api_host if host is None else host
        self._tokens = [t.encode() for t in settings.api_tokens]
        self._store_tokens = [t.encode() for t in settings.stow_tokens]
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer or None
        self._keys: dict[str | None, tuple[Any, list[str]]] = {}  # kid -> (key, algorithms)
        if settings.jwt_public_key is not None:
            self._load_keys(settings.jwt_public_key.read_bytes())
        self.open = not self._tokens and not self._store_tokens and not self._keys
        if self.open and not is_loopback(host):
            raise RuntimeError(
                "refusing to start: no API_TOKENS, STOW_TOKENS or JWT_PUBLIC_KEY configured "
                f"and the listening address {host!r} is not a loopback address"
            )
        if self.open:
            log.warning("event=open_read_access host=%s reason=no_tokens_configured", host)

    def _load_keys(self, content: bytes) -> None:
        if not self._audience:
            raise RuntimeError("JWT_PUBLIC_KEY is set but JWT_AUDIENCE is empty")
        if content.lstrip().startswith(b"{"):
            for jwk in jwt.PyJWKSet.from_json(content.decode()).keys:
                key = jwk.key
                if _algorithms_for(key):  # symmetric ("oct") keys are never accepted
                    self._keys[jwk.key_id] = (key, _algorithms_for(key))
        else:
            key = load_pem_public_key(content)
            self._keys[None] = (key, _algorithms_for(key))
        if not self._keys or not all(algs for _, algs in self._keys.values()):
            raise RuntimeError("JWT_PUBLIC_KEY must hold RSA, EC or Ed25519 public keys")

    def authenticate(self, authorization: str | None, client_host: str) -> Principal:
        if self.open:
            if not is_loopback(client_host):
                raise AuthError("open access is for loopback clients only")
            return Principal(
                subject="anonymous@loopback", scopes=FULL_READ + STORE_STUDIES, method="open"
            )
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or len(credential) > 8192:
            raise AuthError("missing bearer token")
        static = self._static(credential.encode(), self._tokens, FULL_READ)
        store = self._static(credential.encode(), self._store_tokens, STORE_STUDIES)
        principal = static or store
        if principal is not None:
            return principal
        if not self._keys:
            raise AuthError("unknown token")
        return self._jwt(credential)

    @staticmethod
    def _static(candidate: bytes, tokens: list[bytes], scopes: tuple[str, ...]) -> Principal | None:
        match = None
        for token in tokens:  # compare against all: no early exit
            if hmac.compare_digest(token, candidate):
                match = token
        if match is None:
            return None
        digest = hashlib.sha256(match).hexdigest()[:8]
        return Principal(subject=f"token-{digest}", scopes=scopes, method="token")

    def _select_key(self, credential: str) -> tuple[Any, list[str]]:
        try:
            kid = jwt.get_unverified_header(credential).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError(f"jwt header: {type(exc).__name__}") from exc
        if kid in self._keys:
            return self._keys[kid]
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise AuthError("jwt kid unknown")

    def _jwt(self, credential: str) -> Principal:
        key, algorithms = self._select_key(credential)
        try:
            claims = jwt.decode(
                credential,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=10,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"jwt rejected: {type(exc).__name__}") from exc
        raw = claims.get("scope", claims.get("scp", ""))
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw or []]
        return Principal(subject=str(claims["sub"])[:128], scopes=tuple(scopes), method="jwt")
