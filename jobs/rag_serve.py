"""rag_serve: a knowledge base + a live model endpoint, served as an OpenAI-compatible endpoint.

For each chat request it retrieves the passages of the last user message from the knowledge base, puts them
into that message (backend/pipeline/rag.py ``augment``), forwards the request to the model endpoint with that
endpoint's key, and answers with the model's reply plus ``passages`` (source, place, text, score): a field of
the response, or, when streaming, a last chunk before ``[DONE]``. It answers only with its own key (401
otherwise), registers ``endpoint/<name>`` (engine ``rag``) while it runs, and ends when its model endpoint
goes away. Light: no model is loaded here (cpu_slots 0).
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from backend.access import users
from backend.pipeline import chat, rag
from backend.runtime import server_auth, server_host
from backend.core.errors import BAD_INPUT, UserError
from backend.core.registry import endpoint_meta
from backend.kinds.rag_serve import Spec, upstream
from backend.core.store import open_store
from jobs.common import Job, JobError, run

MAX_BODY_BYTES = 16 * 2**20
WATCH_S = 1.0                   # how often the job looks at its model endpoint and its request count
UPSTREAM_TIMEOUT_S = 600


def question_of(messages: list[dict]) -> str:
    """The last user message's text (a string, or the text parts of a list)."""
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


class Handler(BaseHTTPRequestHandler):
    server_version = "workbench-rag"
    app: "App"

    def log_message(self, fmt, *args):          # one line a request in run.log, without the client's port
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}", flush=True)

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status: int, message: str, kind: str) -> None:
        self.reply(status, {"error": {"message": message, "type": kind, "code": None}})

    def allowed(self) -> bool:
        if server_auth.authorized(self.headers.get("Authorization"), self.app.key):
            return True
        self.refuse(401, "this server answers only the workbench: send its API key as a Bearer token", "unauthorized")
        return False

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if not self.allowed():
            return
        if self.path != "/v1/models":
            return self.refuse(404, f"no route GET {self.path}", "not_found")
        self.reply(200, {"object": "list", "data": [{"id": self.app.name, "object": "model", "owned_by": "workbench"}]})

    def do_POST(self):
        if not self.allowed():
            return
        if self.path != "/v1/chat/completions":
            return self.refuse(404, f"no route POST {self.path}", "not_found")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return self.refuse(413 if length.isdigit() else 400, "the request needs a Content-Length under 16 MiB",
                               "invalid_request_error")
        try:
            body = json.loads(self.rfile.read(int(length)))
            messages = body["messages"]
            assert isinstance(body, dict) and isinstance(messages, list) and messages
        except (ValueError, KeyError, TypeError, AssertionError):
            return self.refuse(400, "the body must be JSON with a list of messages", "invalid_request_error")
        passages = rag.retrieve(self.app.retriever, question_of(messages))
        body.update(messages=rag.augment(messages, passages), model=self.app.upstream["model"])
        self.app.requests += 1
        req = urllib.request.Request(self.app.upstream["url"].rstrip("/") + "/chat/completions", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **server_auth.headers(self.app.upstream)})
        try:
            upstream_reply = urllib.request.urlopen(req, timeout=UPSTREAM_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            data = e.read()
            self.send_response(e.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        except OSError as e:
            return self.refuse(502, f"the model endpoint {self.app.upstream['name']} did not answer: {e}",
                               "server_error")
        with upstream_reply:
            if not body.get("stream"):
                answer = json.loads(upstream_reply.read())
                return self.reply(200, {**answer, "model": self.app.name, "passages": passages})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()              # HTTP/1.0: the stream ends when the connection closes
            last = {}
            for line in upstream_reply:
                if line.startswith(b"data: [DONE]"):
                    break
                if line.startswith(b"data: {"):
                    last = json.loads(line[6:])
                    line = b"data: " + json.dumps({**last, "model": self.app.name}).encode() + b"\n"
                self.wfile.write(line)
                self.wfile.flush()
            chunk = {"id": last.get("id", ""), "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": self.app.name, "choices": [], "passages": passages}
            self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\ndata: [DONE]\n\n")


class App:
    def __init__(self, name: str, key: str, retriever, upstream: dict):
        self.name, self.key, self.retriever, self.upstream = name, key, retriever, upstream
        self.requests = 0


def main(spec: Spec, job: Job) -> dict:
    store, job_id, owner = open_store(job.home), job.id, job.owner
    t0 = time.monotonic()
    try:
        kb = rag.check_kb(spec.kb, owner, job.home)
        model = upstream(spec, job.home, job.owner)
        chat.check_use(model, owner, home=job.home)
    except UserError as e:                  # no such base or endpoint, or one the owner may not use (audited)
        raise JobError(str(e), BAD_INPUT, "pick a knowledge base and a model endpoint you may use") from None
    job.progress(0, 1, "", f"loading the index of {spec.kb}", force=True)
    try:
        retriever = rag.load(kb.path, spec.top_k, rag.reranker(spec.reranker, job.home) if spec.reranker else None)
    except UserError as e:                  # a dense index whose embedding model is gone, a reranker that went
        raise JobError(str(e), BAD_INPUT, "build the knowledge base again, or pick another reranker") from None
    app = App(spec.name or f"{spec.kb} + {spec.endpoint}", server_auth.new_key(), retriever, model)
    rag.segment("知识库")                  # jieba loads its dictionary now, not at the first Chinese question
    host, address = server_host.bind()
    server = ThreadingHTTPServer((host, 0), type("RagHandler", (Handler,), {"app": app}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = server_host.url(address, server.server_address[1]) + "/v1"
    source = f"{spec.kb} + {model.get('source') or model['name']}"
    meta = endpoint_meta(url, app.name, "rag", model.get("device", "cpu"), job_id, source, time.monotonic() - t0,
                         model.get("context_len"), tokenizer=model.get("tokenizer", ""),
                         generation=model.get("generation") or {}, api_key=app.key, kb=spec.kb, top_k=spec.top_k, reranker=spec.reranker,
                         upstream=model["name"], upstream_engine=model.get("engine"))
    try:
        job.register("endpoint", app.name, kb.path, meta)
        job.progress(1, 1, "", "ready", force=True)
        job.event("ready", endpoint=app.name, url=url)
        job.message(f"ready: endpoint {app.name!r} at {url}: {spec.kb} ({kb.meta.get('chunks')} passages, top "
                    f"{spec.top_k}) answered by {model['name']}")
        counted = 0
        while any(e["name"] == model["name"] for e in chat.live_endpoints(job.home, by=users.OPERATOR)):
            if app.requests != counted:
                counted = meta["requests"] = app.requests
                job.register("endpoint", app.name, kb.path, meta)
            time.sleep(WATCH_S)
        job.message(f"stopped: the model endpoint {model['name']!r} is gone")
        return {"stopped": "upstream gone", "requests": app.requests}
    finally:
        store.delete("endpoint", app.name, job_id=job_id)
        server.shutdown()


if __name__ == "__main__":
    run(main, Spec)
