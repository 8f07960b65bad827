"""vlm: an image-text model loaded once and served on a port of its machine (backend/runtime/server_host.py), registered
as an endpoint while it runs.

Standard transformers image-text-to-text models (LLaVA, Qwen2-VL, InternVL...) go through their
processor and chat template; InternLM-XComposer (remote code) goes through its own
``model.chat(tokenizer, query, image=[...], history=...)`` and only when the registry entry has the
explicit opt-in ``trust_remote_code: true``. The HTTP server (stdlib, in this process) answers
``GET /health`` and ``POST /chat`` (newline-delimited JSON; see backend/pipeline/vlm.py for the wire format).
One answer is generated at a time; bad requests get a clear error and never end the job.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from pathlib import Path


from backend.runtime import server_auth, server_host
from backend.workspace import remote_code
from backend.core.errors import BAD_INPUT, CRASH
from backend.core.registry import endpoint_meta
from backend.kinds.vlm import Spec, resolve
from backend.core.store import open_store
from backend.workspace.images import open_image
from jobs.common import Job, JobError, run
from jobs.serve import idle_stop

READY_POLL_S = 0.2


# -- the model --------------------------------------------------------------------------------------
class Model:
    """The loaded model and one ``answer(request, write)`` at a time."""

    def __init__(self, m: dict, spec: Spec, device: str, job: Job):
        import torch
        self.torch, self.m, self.spec, self.device, self.job = torch, m, spec, device, job
        self.lock = threading.Lock()
        dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]
        path = str(m["path"])
        remote = remote_code.trust(path, job.home)          # the registry's opt-in, for this code (checked at submit too)
        if m["xcomposer"]:
            from transformers import AutoModel, AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            self.model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=remote).to(device).eval()
            self.processor = None
        else:
            from transformers import AutoModelForImageTextToText, AutoProcessor
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype,
                                                                     trust_remote_code=remote).to(device).eval()
            if m.get("adapter"):                    # an image-text fine-tune's adapter on its base model
                from peft import PeftModel
                self.model = PeftModel.from_pretrained(self.model, str(m["adapter"])).to(device).eval()
        cfg = m["config"]
        self.context_len = (cfg.get("text_config") or {}).get("max_position_embeddings") or \
            cfg.get("max_position_embeddings") or cfg.get("max_length")
        self.requests = 0

    # request -> (messages with PIL images) --------------------------------------------------------
    def parse(self, body: dict) -> tuple[list[dict], int, dict]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("the request has no messages")
        out, n = [], 0
        for i, msg in enumerate(msgs, 1):
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} needs a role of system, user or assistant")
            images = []
            for img in msg.get("images") or []:
                n += 1
                if n > self.spec.max_images:
                    raise ValueError(f"too many images: this endpoint takes at most {self.spec.max_images} "
                                     "per conversation")
                images.append(open_image(self._image_bytes(img, n), f"image {n}"))
            out.append({"role": msg["role"], "content": str(msg.get("content") or ""), "images": images})
        if not out[-1]["content"].strip() or out[-1]["role"] != "user":
            raise ValueError("the last message must be a non-empty user question")
        max_new = int(body.get("max_new_tokens") or 256)
        if not 1 <= max_new <= self.spec.max_new_tokens_limit:
            raise ValueError(f"max_new_tokens must be between 1 and {self.spec.max_new_tokens_limit}")
        beams = int(body.get("num_beams") or 1)
        if not 1 <= beams <= 8:
            raise ValueError("num_beams must be between 1 and 8")
        sampling = {"num_beams": beams, "do_sample": float(body.get("temperature") or 0) > 0}
        if sampling["do_sample"]:
            sampling.update(temperature=float(body["temperature"]), top_p=float(body.get("top_p") or 0.9))
        return out, max_new, sampling

    def _image_bytes(self, img, n: int) -> bytes:
        """Images come inline only: a path or URL in a request is refused, so the server never opens a file
        or an address a caller names (the workbench resolves the user's own files before sending)."""
        if isinstance(img, dict) and set(img) == {"data"} and isinstance(img["data"], str) and img["data"]:
            try:
                return base64.b64decode(img["data"], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"image {n} is not valid base64") from None
        raise ValueError(f"image {n} must be inline as {{'data': base64}}: this server reads no file path or URL")

    # generation ------------------------------------------------------------------------------------
    def answer(self, body: dict, write) -> None:
        """Parse (ValueError on bad input, before anything is written), then stream {"delta"} lines
        (one delta with the whole answer for beam search). A client that goes away stops generation."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
        msgs, max_new, sampling = self.parse(body)
        gone = threading.Event()

        class ClientGone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return gone.is_set()
        beam = sampling["num_beams"] > 1        # transformers streams only greedy/sampling
        streamer = None if beam else TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                                           timeout=TIMEOUT_S)
        kwargs = {"max_new_tokens": max_new, "stopping_criteria": StoppingCriteriaList([ClientGone()]), **sampling}
        if streamer:
            kwargs["streamer"] = streamer
        if self.m["xcomposer"]:
            target, call = self._xcomposer_call(msgs, kwargs)
        else:
            target, call = self.model.generate, {**self._inputs(msgs, max_new), **kwargs}
        with self.lock:
            self.requests += 1
            failure, result = [], []

            def work():
                try:
                    with self.torch.inference_mode():
                        result.append(target(**call))
                except BaseException as e:  # noqa: BLE001 - reported to the client, the job goes on
                    failure.append(e)
                    if streamer:
                        streamer.end()
            t = threading.Thread(target=work, daemon=True)
            t.start()
            tokens = 0
            try:
                for delta in streamer or []:
                    if delta:
                        tokens += 1
                        write({"delta": delta})
                t.join()
                if beam and not failure:
                    text = self._decode(result[0], call)
                    tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                    write({"delta": text})
            except OSError:                          # the client went away (stop button, closed tab)
                gone.set()
                t.join()
                print(f"client went away after {tokens} tokens: generation stopped", flush=True)
                return
        if failure:
            e = failure[0]
            write({"error": f"{type(e).__name__}: {e}"[:1000]})
        else:
            write({"done": True, "tokens": tokens, "finish_reason": "length" if tokens >= max_new else "stop"})

    def _decode(self, out, call: dict) -> str:
        if isinstance(out, tuple):                    # XComposer's chat returns (answer, history)
            return out[0]
        return self.tokenizer.decode(out[0][call["input_ids"].shape[1]:], skip_special_tokens=True)

    def _inputs(self, msgs: list[dict], max_new: int) -> dict:
        conv, images = [], []
        for m in msgs:
            parts = [{"type": "image"} for _ in m["images"]] + [{"type": "text", "text": m["content"]}]
            conv.append({"role": m["role"], "content": parts})
            images += m["images"]
        prompt = self.processor.apply_chat_template(conv, add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
        n = int(inputs["input_ids"].shape[1])
        if self.context_len and n + max_new > self.context_len:
            raise ValueError(f"the conversation is {n} tokens (images included) and {max_new} more were asked "
                             f"for, but the model's context is {self.context_len} tokens: shorten the prompt, "
                             "use fewer images or lower max new tokens")
        return dict(inputs.to(self.device))

    def _xcomposer_call(self, msgs: list[dict], gen: dict) -> tuple:
        """XComposer's own chat API: the conversation's images as files (one path for XComposer2-VL, a list
        for 2.5), each at an ``<ImageHere>`` in the turn it came with (XComposer splits the whole prompt,
        history included, on them), earlier turns as (query, answer) history, a system message as
        ``meta_instruction``. Tested against a stand-in with the same signature (tests/fixtures)."""
        import tempfile
        tmp = Path(tempfile.mkdtemp(dir=self.job.dir))
        paths, history, pending, extra = [], [], "", {}
        for m in msgs:
            for im in m["images"]:
                paths.append(str(tmp / f"{len(paths)}.png"))
                im.save(paths[-1])
            if m["role"] == "system":
                extra["meta_instruction"] = m["content"]
            elif m["role"] == "user":         # consecutive user turns are joined
                places = "<ImageHere>" * max(0, len(m["images"]) - m["content"].count("<ImageHere>"))
                pending = (pending + "\n" if pending else "") + places + m["content"]
            elif pending:
                history.append((pending, m["content"]))
                pending = ""
        image = paths[0] if len(paths) == 1 else (paths or None)
        return self.model.chat, dict(tokenizer=self.tokenizer, query=pending, image=image, history=history,
                                     **extra, **gen)


TIMEOUT_S = 600.0


MAX_BODY_BYTES = 64 * 2**20      # a request: a few images as base64 and the conversation


def make_server(model: Model, key: str, host: str):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print("http: " + fmt % args, flush=True)

        def _json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._json(200, {"ok": True, "model": model.m["name"], "requests": model.requests})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self):
            if not server_auth.authorized(self.headers.get("Authorization"), key):
                self.close_connection = True
                self._json(401, {"error": "this server answers only the workbench: send its API key as a Bearer token"})
                return
            if self.path != "/chat":
                self._json(404, {"error": f"no route {self.path}"})
                return
            length = self.headers.get("Content-Length", "")
            if not length.isdigit():
                self.close_connection = True
                self._json(400 if length else 411, {"error": "the request needs a valid Content-Length"})
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                self._json(413, {"error": f"the request is over {MAX_BODY_BYTES // 2**20} MiB: send fewer or smaller images"})
                return
            try:
                body = json.loads(self.rfile.read(int(length)) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the request body must be a JSON object")
            except ValueError as e:
                self._json(400, {"error": f"bad request: {e}"})
                return
            started = False

            def write(obj: dict) -> None:
                nonlocal started
                if not started:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    started = True
                data = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            try:
                model.answer(body, write)
            except ValueError as e:
                if started:
                    write({"error": str(e)})
                else:
                    self._json(400, {"error": str(e)})
                    return
            except Exception as e:  # noqa: BLE001 - one failed request must not end the server
                if not started:
                    self._json(500, {"error": f"{type(e).__name__}: {e}"[:1000]})
                    return
                write({"error": f"{type(e).__name__}: {e}"[:1000]})
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:                           # the client is gone; nothing more to tell it
                pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    return server


def main(spec: Spec, job: Job) -> dict:
    import urllib.request

    store = open_store(job.home)
    job_id = job.id
    try:
        m = resolve(spec, job.home)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT, "register the model (Models page) and submit again") from None
    device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") and spec.device != "cpu" else "cpu"
    name = spec.name or f"{m['name']} #{job_id}"
    server = None
    try:
        t0 = time.monotonic()
        job.progress(0, 2, "steps", f"loading {m['name']} on {device}", force=True)
        model = Model(m, spec, device, job)
        job.progress(1, 2, "steps", "starting the server", force=True)
        key = server_auth.new_key()
        host, address = server_host.bind()
        server = make_server(model, key, host)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = server_host.url(address, server.server_address[1])
        deadline = t0 + spec.ready_timeout_s
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise JobError("the vlm server did not become ready in time", CRASH)
            time.sleep(READY_POLL_S)
        job.progress(2, 2, "steps", "ready", force=True)
        meta = endpoint_meta(base, m["name"], "vlm", device, job_id, m["name"], time.monotonic() - t0,
                             model.context_len, mode="xcomposer" if m["xcomposer"] else "transformers",
                             max_images=spec.max_images, api_key=key, idle_stop_s=server_auth.idle_limit_s(device),
                             **({"adapter": m["name"], "base_model": m["base"]} if m.get("adapter") else {}))
        job.register("endpoint", name, m["path"], meta)
        job.event("ready", endpoint=name, url=base)
        job.message(f"ready: image-text endpoint {name!r} at {base} ({meta['load_s']} s to load)")
        seen, last = 0, time.monotonic()
        while True:
            if model.requests != seen:
                seen = meta["requests"] = model.requests
                last = time.monotonic()
                job.register("endpoint", name, m["path"], meta)
            if server_auth.idle_too_long(last, device, time.monotonic()) and not model.lock.locked():
                return idle_stop(job, server_auth.idle_limit_s(device), seen)
            time.sleep(1.0)
    finally:
        store.delete("endpoint", name, job_id=job_id)
        if server:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    run(main, Spec)
