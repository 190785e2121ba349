"""Caps on request bodies, as ASGI middleware: they hold before any byte is parsed or echoed back.

* Size (413): a study spec is a few kilobytes; without a cap, a 20 MB body was parsed, validated and echoed back in
  its 422 (or stored, and then returned to every caller of ``GET /studies``). The declared ``Content-Length`` is
  checked first; a body without one (chunked) is counted as it arrives and refused once it passes the cap.
* Nesting (422): JSON nested thousands deep overflows the parser's recursion (FastAPI answered an undocumented
  400) and every recursive walk after it. The deepest real spec is about a dozen levels; ``MAX_DEPTH`` is far above.
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
