"""`transformers serve` that answers only the workbench, and only for the models its job started it with:
the same CLI, with a front added to its FastAPI app. The front answers 401 unless ``Authorization: Bearer
<key>`` (the key comes from $WORKBENCH_SERVER_KEY, not the command line); takes only the OpenAI
generation routes (``/load_model``, ``/reset`` and the rest are 404); reads a request body once, capped at
MAX_BODY_BYTES (413; a bad Content-Length is 400), and answers 404 with an OpenAI-style error when its
``model`` is not one the job serves ($WORKBENCH_SERVED_MODELS, a JSON list), so a request naming another
folder never makes the server load it. ``/health`` stays open for the readiness check.

    python -m jobs.serve_keyed serve <model> --host 127.0.0.1 --port ...
"""
from __future__ import annotations

import json
import os

from backend.runtime.server_auth import KEY_ENV, MODELS_ENV, authorized

ROUTES = {("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
          ("POST", "/v1/responses")}
MAX_BODY_BYTES = 16 * 2**20       # a long conversation is well under this


class Front:
    """A plain ASGI middleware (not starlette's BaseHTTPMiddleware, which holds streamed answers and
    stalled the server's shutdown): the checks above, then the app with the body it already read."""

    def __init__(self, app, key: str, models: list[str]):
        self.app, self.key, self.models = app, key, models

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not authorized(headers.get(b"authorization", b"").decode("latin-1"), self.key):
            return await refuse(send, 401, "this server answers only the workbench: send its API key as a "
                                "Bearer token", "unauthorized")
        if (scope["method"], scope["path"]) not in ROUTES:
            return await refuse(send, 404, f"no route {scope['method']} {scope['path']}", "not_found")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length and not length.isdigit():
            return await refuse(send, 400, "the request needs a valid Content-Length", "invalid_request_error")
        if length and int(length) > MAX_BODY_BYTES:
            return await refuse(send, 413, f"the request is over {MAX_BODY_BYTES // 2**20} MiB",
                                "invalid_request_error")
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return await refuse(send, 413, f"the request is over {MAX_BODY_BYTES // 2**20} MiB",
                                    "invalid_request_error")
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return await refuse(send, 400, "the request body must be a JSON object", "invalid_request_error")
        model = request.get("model", self.models[0] if len(self.models) == 1 else None)
        if model not in self.models:
            return await refuse(send, 404, f"the model {model!r} is not served here; this server serves "
                                f"{', '.join(self.models)}", "invalid_request_error", "model_not_found")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)


async def refuse(send, status: int, message: str, kind: str, code: str | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def fronted(build_server, key: str, models: list[str]):
    def build(*args, **kwargs):
        app = build_server(*args, **kwargs)
        app.add_middleware(Front, key=key, models=models)
        return app
    return build


def main() -> None:
    key = os.environ.pop(KEY_ENV, "")
    models = json.loads(os.environ.pop(MODELS_ENV, "[]"))
    if not key or not models:
        raise SystemExit(f"{KEY_ENV} and {MODELS_ENV} must be set: refusing to serve without a key and models")
    import transformers.cli.serving.server as server
    server.build_server = fronted(server.build_server, key, models)
    from transformers.cli.transformers import main as cli
    cli()


if __name__ == "__main__":
    main()
