"""The API key: which header carries it and the dependency that checks it."""

import hmac

API_KEY_HEADER = "X-API-Key"


def key_header():
    """FastAPI's reader of the X-API-Key header (None where a request has none)."""
    from fastapi.security import APIKeyHeader

    return APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")


def guarded_by(api_key: str | None) -> list:
    """The dependencies of a route that needs `api_key` (401 without it); none when it is None."""
    from fastapi import Depends, HTTPException

    if api_key is None:
        return []
    header = key_header()

    async def require_key(given: str | None = Depends(header)) -> None:
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")

    return [Depends(require_key)]
