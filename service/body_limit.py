"""Caps on request bodies, as ASGI middleware: they hold before any byte is parsed or echoed back.

* Size (413): a study spec is a few kilobytes; without a cap, a 20 MB body was parsed, validated and echoed back in
  its 422 (or stored, and then returned to every caller of ``GET /studies``). The declared ``Content-Length`` is
  checked first; a body without one (chunked) is counted as it arrives and refused once it passes the cap.
* Nesting (422): JSON nested thousands deep overflows the parser's recursion (FastAPI answered an undocumented
  400) and every recursive walk after it. The deepest real spec is about a dozen levels; ``MAX_DEPTH`` is far above.
* Text (422): a JSON body is UTF-8 (RFC 8259; other bytes were FastAPI's undocumented 400), and its strings are
  text: ``"\\ud800"`` is valid JSON but a lone surrogate, which no database or JSON response can encode (it was a
  500). The 422 names the field, in FastAPI's shape.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32
# An unterminated string runs to the end of the body (every match succeeds: linear, where a pattern that must find
# the closing quote backtracks quadratically on a body of escapes, before auth).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings aside)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


# A \uD800-\uDFFF escape: only a body holding one can decode to a lone surrogate (most bodies skip the parse).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def not_text(body: bytes) -> dict[str, object] | None:
    """FastAPI's error for a body that is not UTF-8, or whose JSON holds a string (or key) with a lone surrogate,
    naming where; None for any other body (invalid JSON included: FastAPI's own 422 names that)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        return {"loc": ["body"], "type": "json_invalid", "msg": f"the body is not UTF-8 ({err.reason} at byte "
                                                                 f"{err.start}); JSON must be"}
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    loc = _surrogate_at(value)
    if loc is None:
        return None
    return {"loc": ["body", *loc], "type": "string_unicode",
            "msg": "must be text: a \\ud800-\\udfff escape without its pair is no character"}


def _surrogate_at(value: object) -> list[str | int] | None:
    """The path to the first string or key in ``value`` that UTF-8 cannot encode (a lone surrogate), if any."""
    if isinstance(value, str):
        return None if _encodable(value) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not _encodable(key):
            return [key.encode("utf-8", "backslashreplace").decode()]
        if (inner := _surrogate_at(item)) is not None:
            return [key, *inner]
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _detail(limit: int) -> str:
    return f"request body larger than {limit} bytes (PHASETUNE_MAX_BODY_BYTES)"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _answer(send, 413, _detail(self.max_bytes))
            return
        # The body is read whole before the app runs (it is at most max_bytes), so its depth can be checked first.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await _answer(send, 413, _detail(self.max_bytes))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and (depth := nesting_depth(body)) > self.max_depth:
            await _answer(send, 422, [{"loc": ["body"], "type": "value_error",
                                       "msg": f"JSON nested {depth} levels deep; at most {self.max_depth}"}])
            return
        if body and (error := not_text(body)) is not None:
            await _answer(send, 422, [error])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, detail: object) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
