"""API-key check for `dspark serve --api-key KEY`: every route but `/health` needs `Authorization: Bearer KEY`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from fastapi import Request

from dspark.serve.errors import APIError


def bearer_check(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that refuses a missing or wrong key with a 401 (a no-op without a key)."""
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check
