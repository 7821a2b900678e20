"""Cloudflare's API envelope: every answer has success, errors, messages and result."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """A failure the API answers with an envelope; the message is safe to show."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def envelope(result: Any, status: int = 200, **extra: Any) -> web.Response:
    body = {"success": True, "errors": [], "messages": [], "result": result, **extra}
    return web.json_response(body, status=status)


def failure(status: int, code: int, message: str) -> web.Response:
    body = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return web.json_response(body, status=status)


async def json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 ApiError."""
    raw = await request.read()
    if allow_empty and not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, 1001, "Invalid request: the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, 1001, "Invalid request: the body must be a JSON object")
    return obj
