"""Chat with OpenAI-compatible endpoints: the live ones that `serve` jobs registered, or an external URL.

Pages call ``endpoints()`` to list, ``external()`` to check and describe an outside URL, and
``stream_chat()`` to get an answer as text deltas. Errors are ``ChatError`` with a message for the
user (and the partial answer, when the endpoint died mid-reply). API keys are passed in by the
caller and handed to the client only: never logged, never written to the store.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from backend.access import ownership, users
from backend.core import url_guard
from backend.core.errors import UserError
from backend.core.states import JobState
from backend.core.store import open_store

TIMEOUT_S = 600.0          # a whole answer; CPU servers queue requests, so this is generous
CONNECT_TIMEOUT_S = 5.0
MESSAGE_OVERHEAD_TOKENS = 8  # role markers a chat template adds per message (an estimate)


class ChatError(UserError):
    """A failure the user should read (a message key and fields); ``partial`` is the answer received
    before it happened."""

    def __init__(self, key: str, /, partial: str = "", **fields):
        super().__init__(key, **fields)
        self.partial = partial

    @property
    def fmt(self) -> dict:          # the fields under the name they had before every error carried a key
        return self.fields


class Refused(ChatError, users.Refused):
    """A server the acting user may not use (another student's); recorded in the audit log."""


# -- endpoints ----------------------------------------------------------------------------------
def live_endpoints(home: Path, by: users.Actor) -> list[dict]:
    """Every registered endpoint whose job is running (serve and vlm), newest first. Entries whose job
    ended without removing them (killed first) are skipped here and removed by the worker's sweep. With
    ``by``, only those that user may use: a student's own servers and those an instructor started."""
    store = open_store(home)
    out = []
    for e in store.items("endpoint"):
        job = store.job(e.job_id) if e.job_id else None
        if job is not None and job.state == JobState.RUNNING and users.may_use(e, by, home=home):
            out.append({"name": e.name, **e.meta, "owner": e.owner})
    return out


def endpoints(home: Path, by: users.Actor) -> list[dict]:
    """Live OpenAI-compatible endpoints ``by`` may use (vlm ones speak their own protocol: backend/pipeline/vlm.py)."""
    return [{**e, "external": False} for e in live_endpoints(home, by) if e.get("engine") != "vlm"]


def check_use(endpoint: dict, by: users.Actor, error: type[ChatError] = Refused, *, home: Path) -> None:
    """Refuse (``error``, audited) a workbench server ``by`` may not use: one another student started.
    The owner comes from the registry, found by the endpoint's URL (or, for one of ours, its name), never
    from the dict the caller passed; outside URLs that are not workbench servers are the caller's own."""
    url = str(endpoint.get("url") or "").rstrip("/")
    for e in open_store(home).items("endpoint"):
        ours = str(e.meta.get("url") or "").rstrip("/")
        if (url and ours == url) or (not endpoint.get("external") and e.name == endpoint.get("name")):
            if not users.may_use(e, by, home=home):
                users.refuse(by, "chat", f"endpoint {e.name}", error("err.users.endpoint_not_yours", name=e.name), home=home)


def servable(home: Path, by: users.Actor) -> list[dict]:
    """What a serve job can start: registry models, and adapters on a registered base model (those ``by`` may
    use). Each item: {"label", "spec"} where spec is the serve job's spec."""
    models = {m.name for m in ownership.items("model", by, home)}
    out = [{"label": f"{m} (model)", "spec": {"model": m}} for m in sorted(models)]
    for a in ownership.items("adapter", by, home):
        base = a.meta.get("base_model", "")
        if base in models:
            out.append({"label": f"{base} + {a.name} (adapter)", "spec": {"model": base, "adapter": a.name}})
    return out


def serve_job_endpoint(job_id: int, home: Path) -> dict | None:
    """The endpoint a serve job was asked for (with an adapter, not the base it also serves)."""
    return next((e for e in endpoints(home, by=users.OPERATOR) if e.get("job_id") == job_id and not e.get("base_of")), None)


def serving(model: str, adapter: str = "", *, home: Path) -> dict | None:
    """A live endpoint that already serves this registry model (with this adapter), if any."""
    source = model + (f"+{adapter}" if adapter else "")
    return next((e for e in endpoints(home, by=users.OPERATOR) if e.get("source") == source and not e.get("base_of")), None)


def base_endpoint(endpoint: dict, home: Path) -> dict | None:
    """The base model served beside a fine-tuned endpoint by the same job, if any."""
    return next((e for e in endpoints(home, by=users.OPERATOR) if e.get("base_of") == endpoint["name"]), None)


def uptime_s(endpoint: dict) -> float:
    return max(0.0, time.time() - float(endpoint.get("started") or time.time()))


def _client(endpoint: dict, api_key: str | None = None):
    """An OpenAI client for ``endpoint``; an outside one connects only through the URL guard."""
    from openai import OpenAI, Timeout, _base_client
    http = getattr(_base_client, "httpx2", None) or _base_client.httpx      # the HTTP library openai speaks
    return OpenAI(base_url=endpoint["url"], api_key=api_key or endpoint.get("api_key") or "none", max_retries=0,
                  timeout=Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                  http_client=url_guard.http_client(http) if endpoint.get("external") else None)


def external(url: str, api_key: str = "", model: str = "", name: str = "") -> dict:
    """Check an outside OpenAI-compatible URL (and key) and describe it as an endpoint. The key is not
    part of the result: the caller keeps it (Streamlit session) and passes it to ``stream_chat``."""
    import openai
    url = (url or "").strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ChatError("err.chat.bad_url", url=url or "(empty)")
    if not url.endswith("/v1") and "/v1/" not in url + "/":
        url += "/v1"
    ep = {"name": name, "url": url, "model": model.strip(), "engine": "external",
          "device": "-", "external": True, "started": time.time(), "requests": None}
    try:
        models = [m.id for m in _client(ep, api_key).models.list()]
    except openai.AuthenticationError:
        raise ChatError("err.chat.key_refused", where=parsed.netloc) from None
    except openai.PermissionDeniedError:
        raise ChatError("err.chat.key_forbidden", where=parsed.netloc) from None
    except openai.APIConnectionError as e:
        if why := url_guard.blocked(e):
            raise ChatError("err.chat.blocked_url", url=url, reason=str(why)) from None
        raise ChatError("err.chat.unreachable_url", url=url) from None
    except openai.APIStatusError as e:
        if not ep["model"]:
            raise ChatError("err.chat.models_http", url=url, code=e.status_code) from None
        models = []
    if not ep["model"]:
        if not models:
            raise ChatError("err.chat.no_models", url=url)
        ep["model"] = models[0]
    short = ep["model"].rstrip("/").rsplit("/", 1)[-1]         # a served folder's path: its last part
    ep["name"] = ep["name"] or f"{short} @ {parsed.netloc} (external)"     # one server, several models
    return ep


# -- prompts ------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _tokenizer(path: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def count_tokens(endpoint: dict, messages: list[dict]) -> int | None:
    """Tokens of a conversation by the endpoint's own tokenizer (no weights loaded), or None if unknown."""
    path = endpoint.get("tokenizer")
    if not path or not Path(path).is_file():
        return None
    tok = _tokenizer(path)
    return sum(len(tok.encode(m["content"], add_special_tokens=False).ids) + MESSAGE_OVERHEAD_TOKENS
               for m in messages)


def build_messages(history: list[dict], prompt: str, system: str = "") -> list[dict]:
    """The messages to send: system prompt, earlier turns (role/content only), the new prompt."""
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    msgs += [{"role": m["role"], "content": m["content"]} for m in history if m["role"] in ("user", "assistant")]
    return msgs + [{"role": "user", "content": prompt}]


def check_prompt(endpoint: dict, messages: list[dict], max_tokens: int) -> None:
    """Refuse what no endpoint should be sent (raises ChatError with ``key``): an empty prompt, or a
    conversation plus ``max_tokens`` longer than the endpoint's context (when its tokenizer is known).
    Pages call it before a prompt joins the history; ``stream_chat`` calls it too."""
    if not messages or not messages[-1]["content"].strip():
        raise ChatError("chat.empty")
    limit = endpoint.get("context_len")
    n = count_tokens(endpoint, messages) if limit else None
    if n is not None and n + max_tokens > limit:
        raise ChatError("chat.too_long", name=endpoint.get("name", ""), n=n, max_tokens=max_tokens, limit=limit)


# -- answering ----------------------------------------------------------------------------------
def stream_chat(endpoint: dict, messages: list[dict], temperature: float = 0.7, top_p: float = 0.9,
                max_tokens: int = 256, stop: list[str] | None = None, api_key: str | None = None,
                stats: dict | None = None, *, by: users.Actor, home: Path) -> Iterator[str]:
    """Yield the answer's text deltas. Raises ChatError (with ``partial``) on any failure, ``Refused`` when
    the endpoint is a server ``by`` may not use. ``stats``, if given, receives ttft_s, tokens (chunks with
    text), seconds and finish_reason, and from a knowledge-base endpoint the ``passages`` it used."""
    import openai
    check_use(endpoint, by, home=home)
    check_prompt(endpoint, messages, max_tokens)
    params = {"model": endpoint["model"], "messages": messages, "max_tokens": int(max_tokens), "stream": True,
              "temperature": max(0.0, float(temperature))}
    if temperature > 0:                 # greedy when 0: top_p would only draw a warning
        params["top_p"] = float(top_p)
        if "transformers" in (endpoint.get("engine"), endpoint.get("upstream_engine")):   # never switches sampling on by itself
            gen = {**(endpoint.get("generation") or {}), "do_sample": True, "temperature": float(temperature),
                   "top_p": float(top_p), "max_new_tokens": int(max_tokens)}
            params["extra_body"] = {"generation_config": json.dumps(gen)}
    stop = [s for s in (stop or []) if s]
    if stop:
        params["stop"] = stop[:4]
    where = endpoint.get("name") or endpoint["url"]
    text, finish, t0 = "", None, time.monotonic()
    stats = stats if stats is not None else {}
    stats.update(tokens=0, ttft_s=None, finish_reason=None)
    try:
        stream = _client(endpoint, api_key).chat.completions.create(**params)
    except openai.AuthenticationError:
        raise ChatError("err.chat.key_refused", where=where) from None
    except openai.PermissionDeniedError:
        raise ChatError("err.chat.key_forbidden", where=where) from None
    except openai.APIConnectionError:
        raise ChatError("err.chat.unreachable", where=where, url=endpoint['url']) from None
    except openai.BadRequestError as e:
        msg = _error_text(e)
        if "context" in msg.lower() or "too long" in msg.lower() or "maximum" in msg.lower():
            raise ChatError("err.chat.context", where=where, msg=msg) from None
        raise ChatError("err.chat.rejected", where=where, msg=msg) from None
    except openai.APIStatusError as e:
        raise ChatError("err.chat.http", where=where, code=e.status_code, msg=_error_text(e)) from None
    try:
        with stream:
            for chunk in stream:
                if "passages" in (chunk.model_extra or {}):    # a knowledge-base endpoint's (jobs/rag_serve.py)
                    stats["passages"] = chunk.model_extra["passages"]
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta.content if choice.delta else None
                if delta:
                    if stats["ttft_s"] is None:
                        stats["ttft_s"] = time.monotonic() - t0
                    stats["tokens"] += 1
                    text += delta
                    yield delta
                if choice.finish_reason:
                    finish = choice.finish_reason
    except openai.APIConnectionError as e:
        raise ChatError("err.chat.broke", text, where=where, error=type(e).__name__) from None
    except openai.APIError as e:        # an error event inside the stream
        raise ChatError("err.chat.failed", text, where=where, msg=_error_text(e)) from None
    except Exception as e:  # noqa: BLE001 - the connection broke mid-answer (httpx errors, resets...)
        raise ChatError("err.chat.broke", text, where=where, error=type(e).__name__) from None
    finally:
        stats["seconds"] = time.monotonic() - t0
        stats["finish_reason"] = finish
    if finish is None:
        raise ChatError("err.chat.unfinished", text, where=where)
    users.audit(users.actor(by, home), "chat", f"endpoint {where}", home=home)    # lab progress: "chatted with a server"


def stream_many(jobs: list[dict]) -> Iterator[tuple[int, str | None, ChatError | None]]:
    """Run several ``stream_chat(**kwargs)`` at once (one thread each) and yield ``(index, delta, None)``
    as deltas arrive, ``(index, None, error)`` when one fails and ``(index, None, None)`` when one ends."""
    import queue as queue_mod
    import threading
    q: queue_mod.Queue = queue_mod.Queue()
    stop = threading.Event()

    def work(i: int, kwargs: dict) -> None:
        try:
            for delta in stream_chat(**kwargs):
                if stop.is_set():
                    return
                q.put((i, delta, None))
            q.put((i, None, None))
        except ChatError as e:
            q.put((i, None, e))

    threads = [threading.Thread(target=work, args=(i, kw), daemon=True) for i, kw in enumerate(jobs)]
    for t in threads:
        t.start()
    left = len(threads)
    try:
        while left:
            item = q.get()
            if item[1] is None:
                left -= 1
            yield item
    finally:
        stop.set()          # a consumer that stops early (the Stop button) ends the streams too


def _error_text(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        if msg:
            return str(msg)[:500]
    return str(getattr(e, "message", "") or e)[:500]


# -- transcripts --------------------------------------------------------------------------------
def transcript_json(messages: list[dict], endpoint: dict | None = None, settings: dict | None = None) -> str:
    ep = {k: endpoint.get(k) for k in ("name", "model", "engine", "device", "url", "source")} if endpoint else {}
    return json.dumps({"endpoint": ep, "settings": settings or {}, "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "messages": messages}, ensure_ascii=False, indent=2)


def transcript_markdown(messages: list[dict], endpoint: dict | None = None, settings: dict | None = None) -> str:
    lines = ["# Chat transcript", ""]
    if endpoint:
        lines.append(f"- endpoint: {endpoint.get('name')} ({endpoint.get('engine')}, {endpoint.get('device')})")
        lines.append(f"- model: {endpoint.get('source') or endpoint.get('model')}")
    for k, v in (settings or {}).items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    for m in messages:
        lines += [f"## {m['role']}", "", m["content"], ""]
        if m.get("note"):
            lines += [f"> {m['note']}", ""]
    return "\n".join(lines)
