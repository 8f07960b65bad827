"""The class's model servers as one OpenAI-compatible API on the app's own port (``/v1``).

A request carries a person's key (backend/access/apikeys.py); the gateway answers for the servers that person
may use (chat.endpoints: their own and the instructors'), by their registry names, and forwards to the
right server with that server's own key, which never leaves the machine. Streaming answers pass through
chunk by chunk (httpx streaming under Starlette). The store is only touched from a worker thread: the
event loop also carries every viewer's page.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque

import httpx2 as httpx
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backend.access import apikeys
from backend.core import defaults
from backend.pipeline import chat
from backend.runtime import server_auth

BODY_MAX = 16 * 1024 * 1024             # the same cap the model servers' front applies
FORWARDED = {"chat/completions", "completions", "embeddings"}
_client: httpx.AsyncClient | None = None


def error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> JSONResponse:
    """The OpenAI error shape, so clients raise their usual exceptions."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status)


class RateLimit:
    """At most ``per_minute`` requests per key in any 60 s (a sliding window kept in memory)."""

    def __init__(self):
        self._seen: dict[int, deque] = {}
        self._lock = threading.Lock()

    def allow(self, key_id: int, per_minute: int, now: float) -> bool:
        with self._lock:
            seen = self._seen.setdefault(key_id, deque())
            while seen and seen[0] <= now - 60:
                seen.popleft()
            if per_minute and len(seen) >= per_minute:
                return False
            seen.append(now)
            return True


LIMIT = RateLimit()


def _key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def _lookup(key: str):
    """Who the key acts as, its id, and the endpoints they may use: one trip to the store (one thread hop)."""
    home = defaults.home()             # the app's workspace: the boundary's context, as ui.home() for pages
    found = apikeys.person(key, home)
    return (*found, chat.endpoints(home, by=found[0])) if found else None


async def _person(request: Request):
    found = await run_in_threadpool(_lookup, _key(request))
    if found is None:
        return None, error(401, "Incorrect API key provided: make one on the workbench's API keys page.",
                           "invalid_api_key")
    if not LIMIT.allow(found[1], int(defaults.setting("API_RATE_PER_MIN")), time.monotonic()):
        return None, error(429, "Rate limit reached for this key: wait a minute.", "rate_limit_exceeded",
                           "requests")
    return found, None


async def models(request: Request) -> Response:
    found, refusal = await _person(request)
    if refusal:
        return refusal
    _, key_id, eps = found
    return JSONResponse({"object": "list", "data": [
        {"id": e["name"], "object": "model", "created": int(e.get("started") or 0), "owned_by": e["owner"]}
        for e in eps]}, background=BackgroundTask(apikeys.used, key_id, 0, defaults.home()))


async def forward(request: Request) -> Response:
    found, refusal = await _person(request)
    if refusal:
        return refusal
    _, key_id, eps = found
    route = request.path_params["route"]
    if route not in FORWARDED:
        return error(404, f"Unknown route /v1/{route}.", "not_found")
    if int(request.headers.get("content-length") or 0) > BODY_MAX:
        return error(413, "Request body too large.", "request_too_large")
    try:
        body = json.loads(await request.body())
        name = body["model"]
    except (ValueError, KeyError, TypeError):
        return error(400, "The body must be JSON with a 'model'.", "invalid_body")
    ep = next((e for e in eps if e["name"] == name), None)
    if ep is None:           # another student's server and one that doesn't exist answer alike
        refusal = error(404, f"The model '{name}' does not exist or you do not have access to it.", "model_not_found")
        refusal.background = BackgroundTask(apikeys.used, key_id, 0, defaults.home())
        return refusal
    body["model"] = ep["model"]
    url = str(ep["url"]).rstrip("/") + "/" + route
    client = _http()
    try:
        resp = await client.send(client.build_request("POST", url, json=body, headers=server_auth.headers(ep)),
                                 stream=True)
    except httpx.HTTPError:
        return error(502, f"The server of '{name}' did not answer.", "upstream_unreachable", "server_error")
    if not body.get("stream"):
        data = await resp.aread()
        await resp.aclose()
        return Response(_renamed(data, name), resp.status_code, media_type="application/json",
                        background=BackgroundTask(apikeys.used, key_id, _usage(data), defaults.home()))
    theirs, ours = json.dumps(ep["model"]), json.dumps(name)

    async def chunks():
        count = 0
        try:
            async for line in resp.aiter_lines():       # server-sent events: "data: {...}" lines
                if line.startswith("data: {"):
                    count += 1
                    line = line.replace(theirs, ours, 1)
                yield line + "\n"
        finally:
            await resp.aclose()
            await run_in_threadpool(apikeys.used, key_id, count, defaults.home())
    return StreamingResponse(chunks(), resp.status_code, media_type=resp.headers.get("content-type"))


def _usage(data: bytes) -> int:
    try:
        return int(json.loads(data).get("usage", {}).get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


def _renamed(data: bytes, name: str) -> bytes:
    """The answer names the model as the caller asked for it (its registry name, not a server's path)."""
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and "model" in obj:
            obj["model"] = name
            return json.dumps(obj).encode()
    except ValueError:
        pass
    return data


def _http() -> httpx.AsyncClient:
    """One connection pool for every request (made on the first, inside the server's event loop)."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                                    limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
    return _client


def routes(base: str = "") -> list[Route]:
    prefix = "/" + base.strip("/") if base.strip("/") else ""
    return [Route(f"{prefix}/v1/models", models, methods=["GET"]),
            Route(prefix + "/v1/{route:path}", forward, methods=["POST"])]
