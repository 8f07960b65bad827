"""Image-text chat with the live endpoints that `vlm` jobs registered.

Pages call ``endpoints()`` to list them, ``check_image()`` / ``check_images()`` to refuse bad uploads
before anything is sent (not an image, corrupt, too many pixels, too many images), and ``stream()`` to
get an answer as text deltas. The `vlm` job runs the same checks again on what it receives, so a bad
request never crashes it. Errors are ``VLMError`` with a message for the user (and the partial answer).

Wire format (newline-delimited JSON, one object a line): ``POST <url>/chat`` with
``{"messages": [{"role", "content", "images": [{"data": base64}]}],
"max_new_tokens", "temperature", "top_p", "num_beams"}``; the answer streams as ``{"delta": text}`` lines and ends
with ``{"done": true, "tokens": n, "finish_reason": ...}`` or ``{"error": message}``. Images travel
inline only: the server refuses a file path or URL, and the backend reads an image the user names only
from the workspace's gallery folder (``image_file``), capped at UPLOAD_MAX_MB.
"""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from backend.access import users
from backend.core import defaults, paths
from backend.runtime import server_auth
from backend.pipeline.chat import check_use, live_endpoints
from backend.core.errors import UserError
from backend.workspace.images import MAX_PIXELS, open_image
from backend.workspace.models import list_models
from backend.kinds.vlm import image_text

MAX_IMAGES = 4                   # default per conversation; the endpoint says its own (meta max_images)
TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0


class VLMError(UserError):
    """A failure the user should read (a message key and fields); ``partial`` is the answer received
    before it happened."""

    def __init__(self, key: str, /, partial: str = "", **fields):
        super().__init__(key, **fields)
        self.partial = partial


class Refused(VLMError, users.Refused):
    """A server the acting user may not use (another student's); recorded in the audit log."""


# -- images -------------------------------------------------------------------------------------
def check_image(data: bytes, name: str | UserError = UserError("err.vlm.the_image"), max_pixels: int = MAX_PIXELS) -> dict:
    """Width, height and format of an upload; VLMError if it is not a usable image."""
    try:
        im = open_image(data, name, max_pixels)
    except ValueError as e:
        raise VLMError.of(e) from None
    return {"width": im.width, "height": im.height}


def image_file(name: str | Path, home: Path) -> Path:
    """An image a user names (workspace-relative or absolute) that is a file in the workspace's gallery
    folder and no larger than UPLOAD_MAX_MB; VLMError for anything else (/etc/passwd, a dataset, the
    database, a missing or oversized file). Which gallery images a student may use, compose.resolve says."""
    root = home
    try:
        p = paths.inside(paths.gallery_dir(root), Path(root, name), must_exist=True)
    except paths.OutsideError:
        raise VLMError("err.vlm.image_outside", name=str(name)) from None
    if not p.is_file():
        raise VLMError("err.vlm.image_outside", name=str(name))
    limit_mb = defaults.setting("UPLOAD_MAX_MB")
    if p.stat().st_size > limit_mb * 2**20:
        raise VLMError("err.ds.too_big", name=p.name, mb=p.stat().st_size / 2**20, limit=limit_mb)
    return p


def check_images(images: list, max_images: int = MAX_IMAGES, max_pixels: int = MAX_PIXELS, *, home: Path) -> list[bytes]:
    """Read (bytes, or gallery paths through ``image_file``) and check every image; their bytes, or
    VLMError for the first bad one."""
    if len(images) > max_images:
        raise VLMError("err.vlm.too_many", n=len(images), max_images=max_images)
    out = []
    for i, img in enumerate(images, 1):
        if isinstance(img, (str, Path)):
            p = image_file(img, home)
            name, data = UserError("err.vlm.image_named", i=i, name=p.name), p.read_bytes()
        else:
            name, data = UserError("err.vlm.image_n", i=i), bytes(img)
        check_image(data, name, max_pixels)
        out.append(data)
    return out


# -- endpoints ----------------------------------------------------------------------------------
def startable(home: Path, by: users.Actor) -> list[str]:
    """Registry models a vlm job can serve (image-text ones), by name."""
    out = []
    for m in list_models(home, by=by):
        try:
            config = json.loads((Path(m["path"]) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if image_text(config, m["name"]):
            out.append(m["name"])
    return sorted(out)


def endpoints(home: Path, by: users.Actor) -> list[dict]:
    """Live image-text endpoints (their vlm job still running) ``by`` may use, newest first."""
    return [e for e in live_endpoints(home, by) if e.get("engine") == "vlm"]


def _wire(messages: list[dict], max_images: int, home: Path | None) -> list[dict]:
    total = sum(len(m.get("images") or []) for m in messages)
    if total > max_images:
        raise VLMError("err.vlm.too_many_conv", n=total, max_images=max_images)
    if not messages or not str(messages[-1].get("content", "")).strip():
        raise VLMError("err.vlm.empty")
    out = []
    for m in messages:
        data = check_images(list(m.get("images") or []), max_images, home=home)
        out.append({"role": m["role"], "content": str(m.get("content", "")),
                    "images": [{"data": base64.b64encode(d).decode()} for d in data]})
    return out


# -- answering ----------------------------------------------------------------------------------
def stream(endpoint: dict, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
           top_p: float = 0.9, num_beams: int = 1, stats: dict | None = None, *, by: users.Actor, home: Path) -> Iterator[str]:
    """Yield the answer's text deltas. ``messages``: [{"role", "content", "images": [bytes | gallery path]}].
    Raises VLMError (with ``partial``) on any failure, ``Refused`` for a server ``by`` may not use;
    ``stats`` receives tokens, ttft_s, seconds."""
    check_use(endpoint, by, Refused, home=home)
    body = {"messages": _wire(messages, int(endpoint.get("max_images") or MAX_IMAGES), home),
            "max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p),
            "num_beams": int(num_beams)}
    where = endpoint.get("name") or endpoint["url"]
    stats = stats if stats is not None else {}
    stats.update(tokens=0, ttft_s=None, finish_reason=None)
    t0, text = time.monotonic(), ""
    req = urllib.request.Request(endpoint["url"].rstrip("/") + "/chat", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         **server_auth.headers(endpoint)})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read() or b"{}").get("error") or f"HTTP {e.code}"
        except ValueError:
            msg = f"HTTP {e.code}"
        raise VLMError("err.vlm.refused", where=where, msg=msg) from None
    except OSError:
        raise VLMError("err.vlm.unreachable", where=where, url=endpoint['url']) from None
    finished = False
    try:
        with resp:
            for line in resp:
                if not line.strip():
                    continue
                item = json.loads(line)
                if "error" in item:
                    raise VLMError("err.chat.failed", text, where=where, msg=item['error'])
                if item.get("delta"):
                    if stats["ttft_s"] is None:
                        stats["ttft_s"] = time.monotonic() - t0
                    stats["tokens"] += 1
                    text += item["delta"]
                    yield item["delta"]
                if item.get("done"):
                    stats["finish_reason"] = item.get("finish_reason")
                    finished = True
    except VLMError:
        raise
    except Exception as e:  # noqa: BLE001 - the connection broke mid-answer
        raise VLMError("err.chat.broke", text, where=where, error=type(e).__name__) from None
    finally:
        stats["seconds"] = time.monotonic() - t0
    if not finished:
        raise VLMError("err.chat.unfinished", text, where=where)
