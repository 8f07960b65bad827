"""`transformers serve` that answers only requests carrying the endpoint's key: the same CLI, with a
middleware added to its FastAPI app that answers 401 unless ``Authorization: Bearer <key>`` (the key comes
from $WORKBENCH_SERVER_KEY, not the command line). ``/health`` stays open for the readiness check.

    python -m jobs.serve_keyed serve <model> --host 127.0.0.1 --port ...
"""
from __future__ import annotations

import os

from backend.server_auth import KEY_ENV, authorized


class KeyCheck:
    """A plain ASGI middleware (not starlette's BaseHTTPMiddleware, which holds streamed answers and
    stalled the server's shutdown): 401 for an HTTP request without the key, else the app."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not authorized(header, self.key):
                from starlette.responses import JSONResponse
                await JSONResponse({"error": {"message": "this server answers only the workbench: send its API "
                                              "key as a Bearer token", "type": "unauthorized"}},
                                   status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def keyed(build_server, key: str):
    def build(*args, **kwargs):
        app = build_server(*args, **kwargs)
        app.add_middleware(KeyCheck, key=key)
        return app
    return build


def main() -> None:
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        raise SystemExit(f"{KEY_ENV} is not set: refusing to serve without a key")
    import transformers.cli.serving.server as server
    server.build_server = keyed(server.build_server, key)
    from transformers.cli.transformers import main as cli
    cli()


if __name__ == "__main__":
    main()
