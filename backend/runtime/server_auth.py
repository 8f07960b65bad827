"""Servers answer only the workbench: every serve/vlm endpoint gets its own random API key, kept with
the endpoint in the registry (meta ``api_key``) and sent by the backend's clients (Chat, XComposer,
evaluate); a request without it gets 401. An idle CPU server ends itself (WORKBENCH_CPU_SERVER_IDLE_S),
so a forgotten one does not hold the only CPU slot."""
from __future__ import annotations

import hmac
import secrets

from backend.core import defaults
from backend.core.store import open_store

KEY_ENV = "WORKBENCH_SERVER_KEY"        # how a server child process gets its key (never its command line)
MODELS_ENV = "WORKBENCH_SERVED_MODELS"  # the model ids (a JSON list) a `transformers serve` child answers for


def new_key() -> str:
    return "wb-" + secrets.token_urlsafe(32)


def authorized(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (compared in constant time)."""
    return bool(key) and hmac.compare_digest((header or "").encode(), f"Bearer {key}".encode())


def headers(endpoint: dict) -> dict[str, str]:
    key = endpoint.get("api_key")
    return {"Authorization": f"Bearer {key}"} if key else {}


def idle_limit_s(device: str) -> float:
    """Seconds without a request after which a server ends itself: CPU servers only; 0 = never."""
    return float(defaults.setting("CPU_SERVER_IDLE_S")) if device == "cpu" else 0.0


def idle_too_long(last_request: float, device: str, now: float) -> bool:
    limit = idle_limit_s(device)
    return bool(limit) and now - last_request > limit


def key_for_url(url: str, home) -> str:
    """The key of the workbench endpoint at ``url`` ('' when it is not one of ours)."""
    want = url.rstrip("/")
    return next((e.meta.get("api_key", "") for e in open_store(home).items("endpoint")
                 if str(e.meta.get("url", "")).rstrip("/") == want), "")
