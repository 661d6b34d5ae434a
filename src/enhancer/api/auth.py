"""Optional API keys: who may upload (and, if so configured, read /metrics), checked before any of
the request body is read.

Keys come from ENHANCER_API_KEYS and ENHANCER_API_KEYS_FILE and are kept only as SHA-256 digests.
A presented key is hashed and the digest compared with every stored digest by
`hmac.compare_digest`, without stopping at a match: fixed-length digests compared in constant time
tell an attacker nothing about how much of a key was right or how long the keys are. No key,
presented or configured, goes into a log line, a metric or an error message; the rest of the app
knows a client only by an id derived from its key's digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from enhancer.api.errors import enhancer_error_response
from enhancer.api.openapi import error_response_schema, header
from enhancer.api.route_match import check_guardable, mark_route
from enhancer.api.schemas import AccessBody, ErrorBody
from enhancer.config import Settings
from enhancer.errors import UnauthorizedError

log = logging.getLogger(__name__)

#: Shortest key accepted: a short key can be found by trying.
MIN_KEY_LENGTH = 16
#: `scope["state"]` entry holding the client id of an accepted key (for the per-client limits).
KEY_CLIENT_STATE = "enhancer_key_client"
#: The security scheme's name in the OpenAPI document (/docs offers it under "Authorize").
SECURITY_SCHEME = "APIKey"

_GENERATE = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_MISSING = (
    "this server requires an API key: send it in the header 'Authorization: Bearer <key>' "
    '(e.g. curl -H "Authorization: Bearer $ENHANCER_KEY" -F image=@photo.jpg ...); the '
    "server's operator issues keys"
)
_NOT_BEARER = "the Authorization header must be 'Authorization: Bearer <key>', with an API key"
_WRONG = (
    "the API key in the Authorization header is not valid: check it for typos, or ask the "
    "server's operator for a current key"
)


class ApiKeyConfigError(ValueError):
    """The configured keys cannot be used; the message says where, never what the key is."""


def _check_key(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise ApiKeyConfigError(
            f"{where}: the key is shorter than {MIN_KEY_LENGTH} characters and could be guessed; "
            f"{_GENERATE}"
        )
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ApiKeyConfigError(
            f"{where}: the key has a character that cannot travel in an HTTP header (use visible "
            f"ASCII without spaces); {_GENERATE}"
        )


def configured_keys(settings: Settings) -> list[str]:
    """The keys from ENHANCER_API_KEYS and ENHANCER_API_KEYS_FILE, checked; [] when neither is set.

    A setting that is given but yields no key stops the server rather than leaving it open.
    """
    keys: list[str] = []
    listed = settings.api_keys.get_secret_value()
    if listed.strip():
        entries = [entry.strip() for entry in listed.split(",")]
        if not any(entries):
            raise ApiKeyConfigError(
                "ENHANCER_API_KEYS is set but holds no key, only commas and spaces; unset it to "
                "run without keys"
            )
        for number, key in enumerate(entries, 1):
            if key:
                _check_key(key, f"ENHANCER_API_KEYS, key {number}")
                keys.append(key)
    path = settings.api_keys_file
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ApiKeyConfigError(
                f"ENHANCER_API_KEYS_FILE: cannot read {path} ({exc.strerror or type(exc).__name__}); "
                "the server does not start without the keys it was told to use"
            ) from None
        except UnicodeDecodeError:
            raise ApiKeyConfigError(f"ENHANCER_API_KEYS_FILE: {path} is not UTF-8 text") from None
        found = 0
        for number, line in enumerate(text.splitlines(), 1):
            key = line.strip()
            if key and not key.startswith("#"):
                _check_key(key, f"ENHANCER_API_KEYS_FILE {path}, line {number}")
                keys.append(key)
                found += 1
        if not found:
            raise ApiKeyConfigError(
                f"ENHANCER_API_KEYS_FILE: {path} holds no key; put one key per line, or unset the "
                "setting to run without keys"
            )
    return keys


class ApiKeys:
    """The accepted keys, held only as SHA-256 digests."""

    def __init__(self, keys: Iterable[str] = ()):
        digests = (hashlib.sha256(key.encode("ascii")).digest() for key in keys)
        self._digests = tuple(dict.fromkeys(digests))  # duplicates dropped, order kept

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        return cls(configured_keys(settings))

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def client_of(self, presented: bytes) -> str | None:
        """The client id for the key `presented`, or None if it is none of ours."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for stored in self._digests:  # all of them, also after a match
            if hmac.compare_digest(digest, stored):
                found = stored
        return None if found is None else "key:" + found.hex()[:16]

    def authenticate(self, scope: Scope) -> str:
        """The client id of the request's key; UnauthorizedError if it has none or a wrong one."""
        header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        if header is None:
            raise UnauthorizedError(_MISSING)
        scheme, _, token = header.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise UnauthorizedError(_NOT_BEARER)
        client = self.client_of(token)
        if client is None:
            raise UnauthorizedError(_WRONG, invalid_token=True)
        return client


class ApiKeyMiddleware:
    """Answers 401 to requests for `paths` without a valid key, before the app reads any body."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, paths: frozenset[str]):
        self.app = app
        self.keys = keys
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            client = self.keys.authenticate(scope)
        except UnauthorizedError as error:
            mark_route(scope)  # counted under its route in the metrics
            response = enhancer_error_response(error)
            if scope["method"] not in ("GET", "HEAD"):
                response.headers["Connection"] = "close"  # the body is not worth reading
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[KEY_CLIENT_STATE] = client
        await self.app(scope, receive, send)


router = APIRouter()


@router.get(
    "/access",
    response_model=AccessBody,
    tags=["ops"],
    responses={401: {"model": ErrorBody, "description": "The key sent is not valid."}},
)
async def access(request: Request) -> AccessBody:
    """Whether uploads need an API key and, if a key was sent, that it is accepted. Always open, so
    a client (the web page) can learn whether to ask for a key before it uploads anything."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.required:
        return AccessBody(api_key_required=False, key_accepted=False)
    if not any(name == b"authorization" for name, _ in request.scope["headers"]):
        return AccessBody(api_key_required=True, key_accepted=False)
    keys.authenticate(request.scope)  # a wrong key is a 401, as on an upload
    return AccessBody(api_key_required=True, key_accepted=True)


def _document(app: FastAPI, paths: Iterable[str]) -> None:
    """Declare the Bearer scheme in the OpenAPI document on `paths`; /docs then shows "Authorize",
    and the key entered there is sent with every request it makes to those paths."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from the server's operator, sent as `Authorization: Bearer <key>`.",
        }
        for path in paths:
            for operation in schema.get("paths", {}).get(path, {}).values():
                operation["security"] = [{SECURITY_SCHEME: []}]
                responses = operation.setdefault("responses", {})
                responses["401"] = error_response_schema(
                    "No API key, or not a valid one (`WWW-Authenticate: Bearer`).",
                    _MISSING,
                    {"WWW-Authenticate": header("The scheme to authenticate with.", 'Bearer realm="enhancer"')},
                )
                operation["responses"] = dict(sorted(responses.items()))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_api_keys(app: FastAPI, settings: Settings, upload_paths: Iterable[str]) -> ApiKeys:
    """Load the keys, add GET /access, and when there are keys, require one on the upload paths
    (and /metrics if ENHANCER_METRICS_REQUIRE_KEY). Without keys nothing else changes."""
    keys = ApiKeys.from_settings(settings)
    app.state.api_keys = keys
    app.include_router(router)
    if not keys.required:
        if settings.metrics_require_key:
            log.warning("ENHANCER_METRICS_REQUIRE_KEY is on but no API key is configured: /metrics stays open")
        return keys
    paths = frozenset(upload_paths) | ({"/metrics"} if settings.metrics_require_key else frozenset())
    paths = check_guardable(paths)
    app.add_middleware(ApiKeyMiddleware, keys=keys, paths=paths)
    _document(app, sorted(paths))
    log.info(
        "API keys: %d configured; %s need 'Authorization: Bearer <key>'; /healthz, /readyz%s open",
        len(keys),
        ", ".join(sorted(paths)),
        "" if settings.metrics_require_key else ", /metrics",
    )
    return keys
