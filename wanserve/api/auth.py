"""Bearer-key auth. With API_KEYS set, every route but /health, /metrics and the web page's files
needs `Authorization: Bearer <key>`, and each key sees only the tasks it submitted (the task's
owner is a hash of the key, so the database never holds a key). Without API_KEYS nobody is asked
for a key and everybody sees every task."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wanserve.api.errors import ApiError

# Documents the scheme in /openapi.json; the check itself is below (our error shape, our 401).
bearer_scheme = HTTPBearer(auto_error=False, description="One of API_KEYS (only when API_KEYS is set).")


def owner_of(key: str) -> str:
    """The owner recorded on tasks submitted with `key`."""
    return hashlib.sha256(f"wanserve-api-key\0{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Caller:
    """Who is calling: `owner` for new tasks and `scope` for reading them (None: every task)."""

    owner: str
    scope: str | None


ANONYMOUS = Caller(owner="", scope=None)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, "Authorization", {"WWW-Authenticate": "Bearer"})


def require_caller(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> Caller:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return ANONYMOUS
    if credentials is None:
        raise _unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    given = credentials.credentials.encode()
    # Compare against every key in constant time, so timing tells nothing about near misses.
    matched = [k for k in keys if hmac.compare_digest(given, k.encode())]
    if not matched:
        raise _unauthorized("the API key is not valid")
    owner = owner_of(matched[0])
    return Caller(owner=owner, scope=owner)
