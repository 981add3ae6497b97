"""API keys and the request body limit.

Keys come from an environment variable (comma-separated; `serve.api_keys_env`) and/or a file with one key
per line (`serve.api_keys_file`; blank lines and `#` comments skipped). With any key configured, every /v1
route needs `Authorization: Bearer <key>`; each comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serve.protocol import APIError, error_body


def load_api_keys(env_var: str | None, file: str | None) -> list[str]:
    keys = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()] if env_var else []
    if file:
        path = Path(file)
        if not path.is_file():
            raise LmforgeError(f"serve.api_keys_file: {path} not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise LmforgeError(f"serve.api_keys_file: cannot read {path} ({exc})") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise LmforgeError(f"serve.api_keys_file: {path} holds no key")
        keys += from_file
    return keys


class KeyChecker:
    def __init__(self, keys: list[str]) -> None:
        self.keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> None:
        """Nothing when the header carries a configured key (or none is configured); else a 401 APIError."""
        if not self.keys:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        candidate = given.strip().encode()
        match = False
        for key in self.keys:  # every key is compared: the time taken does not depend on which matched
            match |= hmac.compare_digest(candidate, key)
        if not match:
            raise APIError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class BodyLimitMiddleware:
    """413 for a request body over `limit` bytes: by its Content-Length before reading, or while reading a
    chunked body. The body read is handed on to the app unchanged."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send, int(length))
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._reject(send, total)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _reject(self, send: Any, size: int) -> None:
        message = f"request body too large: {size} bytes, the limit is {self.limit} (serve.max_body_bytes)"
        payload = json.dumps(error_body(message, code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload, "more_body": False})
