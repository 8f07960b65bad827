"""serve: an OpenAI-compatible model server on a port of its machine (backend/runtime/server_host.py), registered as an
endpoint while it runs.

The job resolves a registry model (and optionally a LoRA adapter, merged into a copy in the job
folder), starts the server as a child process in the job's process group (`transformers serve` on
CPU or GPU, `lmdeploy serve api_server` from the lmdeploy engine on GPU), waits for a health check
and a one-token answer, registers ``endpoint/<name>`` in the store, and removes it when it ends.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


from backend.core import defaults
from backend.runtime import engines, server_auth, server_host
from backend.workspace import models, remote_code
from backend.core.errors import UserError
from backend.core.errors import BAD_INPUT, CRASH, MISSING_ENGINE, OOM_TEXT, OUT_OF_MEMORY
from backend.core.registry import Entry, endpoint_meta
from backend.runtime.placement import gpus
from backend.kinds.serve import QUANT_POLICY, Spec, kv_budget, resolve
from backend.core.store import open_store
from jobs.common import Job, JobError, run

READY_POLL_S = 0.5
STOP_GRACE_S = 5.0
IDLE_POLL_S = 1.0
WEIGHTS = re.compile(r"Loading weights:\s+(\d+)%")
CB_MEMORY = re.compile(r"Memory footprint \d+ is more than available memory|CB worker died")
REQUEST = re.compile(r'"POST /v1/(chat/)?completions HTTP/[\d.]+" 200')


# -- the job ---------------------------------------------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def merge_adapter(model: Entry, adapter: Entry, out: Path, job: Job, remote: bool) -> Path:
    """Merge a LoRA adapter into a copy of its base model in the job folder; both servers load it as a model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    job.message(f"merging adapter {adapter.name} into {model.name}")
    base = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32, trust_remote_code=remote)
    try:
        merged = PeftModel.from_pretrained(base, adapter.path).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise JobError(f"adapter {adapter.name} does not fit model {model.name}: {e}", BAD_INPUT,
                       "pick the base model the adapter was trained on") from None
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter.path if (Path(adapter.path) / "tokenizer_config.json").exists()
                                  else model.path, trust_remote_code=remote).save_pretrained(out)
    del base, merged
    return out


def free_memory(device: str) -> tuple[int, int]:
    """(bytes free now, bytes in all) of the RAM (CPU) or of the GPU this job was given (CUDA)."""
    if device == "cuda":          # NVML, not torch: a CUDA context here would hold memory all along
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
        gpu = next((g for g in gpus() if str(g.index) == visible), None) or gpus()[0]
        return int((gpu.total_gb - gpu.used_gb) * 2**30), int(gpu.total_gb * 2**30)
    import psutil
    vm = psutil.virtual_memory()
    return vm.available, vm.total


# LMDeploy takes its API keys on the command line only, where any user's `ps` reads them: the key goes in by
# environment and joins the arguments inside the process (/proc/<pid>/cmdline keeps the ones it was started with)
LMDEPLOY_KEYED = ("import os, sys; from lmdeploy.cli import run; "
                  f"sys.argv = ['lmdeploy', *sys.argv[1:], '--api-keys', os.environ[{server_auth.KEY_ENV!r}]]; run()")


def command(spec: Spec, paths: list[Path], host: str, port: int, device: str, served: str, remote: bool,
            cb_percent: float = 0.0) -> list[str]:
    """The server's command line. transformers serves one model forced, or several on demand (requests
    name the folder), none unloaded while the job runs; LMDeploy serves the first (it loads tokenizers
    with remote code and has no switch for it: a model with its own code is refused without the opt-in)."""
    path = paths[0]
    if spec.engine == "lmdeploy":          # its --api-keys is added inside the process, from the environment
        return [str(engines.env_dir("lmdeploy", defaults.home()) / "bin" / "python"), "-c", LMDEPLOY_KEYED, "serve", "api_server", str(path),
                "--server-name", host, "--server-port", str(port), "--backend", "turbomind",
                "--model-name", served, "--cache-max-entry-count", str(spec.cache_max_entry_count),
                "--quant-policy", str(QUANT_POLICY[spec.kv_quant]), "--log-level", "INFO"]
    models = [str(path)] if len(paths) == 1 else ["--model-timeout", str(10**9)]
    cmd = [sys.executable, "-m", "jobs.serve_keyed", "serve", *models, "--host", host,
           "--port", str(port), "--device", device, "--dtype", spec.dtype,
           "--trust-remote-code" if remote else "--no-trust-remote-code"]
    if spec.continuous_batching:
        cmd += ["--continuous-batching", "--cb-max-batch-tokens", "512", "--cb-max-memory-percent", str(cb_percent)]
        cmd += ["--cb-num-blocks", str(spec.cb_blocks)] if spec.cb_blocks else []
    return cmd


class Server:
    """The child server process: its output goes to run.log; it counts requests and loading progress."""

    def __init__(self, cmd: list[str], job: Job, key: str, models: list[str]):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                   **{server_auth.KEY_ENV: key, server_auth.MODELS_ENV: json.dumps(models)})
        self.key = key
        print("$ " + " ".join(a if a != key else "<api key>" for a in cmd), flush=True)
        self.job = job
        self.requests = 0
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, errors="replace", bufsize=1, env=env)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:            # text mode splits tqdm's \r updates into lines too
            line = line.rstrip()
            if not line:
                continue
            m = WEIGHTS.search(line)
            if m:
                self.job.progress(int(m.group(1)), 100, "%", "loading weights")
                continue                          # keep the log free of progress-bar redraws
            if REQUEST.search(line):
                self.requests += 1
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            self.lines = (self.lines + [line])[-40:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(2)

    def failure(self) -> JobError:
        tail = "\n".join(self.lines[-10:])
        if CB_MEMORY.search(tail):
            return JobError(f"continuous batching could not fit its KV cache in memory:\n{tail}", OUT_OF_MEMORY,
                            "set cb_blocks to 0 (sized from the memory free) or fewer blocks, or a lower "
                            "cb_memory_share; or serve without continuous batching")
        if OOM_TEXT.search(tail):
            return JobError(f"the model server ran out of memory:\n{tail}", OUT_OF_MEMORY,
                            "use a smaller model, a lower cache_max_entry_count, or another GPU")
        if re.search(r"No module named|command not found|No such file", tail):
            return JobError(f"the model server could not start:\n{tail}", MISSING_ENGINE,
                            "install the engine (engine_install) and retry")
        return JobError(f"the model server exited with code {self.proc.returncode}:\n{tail}", CRASH)


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0, key: str = "") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **server_auth.headers({"api_key": key})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"{}")


def wait_ready(server: Server, base: str, served: list[str], engine: str, deadline: float) -> None:
    """Ready = the health URL answers and a one-token completion comes back from each served model."""
    health = base + ("/health" if engine == "transformers" else "/v1/models")
    while True:
        if not server.alive():
            raise server.failure()
        if time.monotonic() > deadline:
            raise JobError("the model server did not become ready in time", CRASH,
                           "raise ready_timeout_s, or look at the log for where loading stopped")
        try:
            if http("GET", health, timeout=2, key=server.key)[0] == 200:
                break
        except (OSError, ValueError):
            pass
        time.sleep(READY_POLL_S)
    for model in served:
        server.job.progress(100, 100, "%", f"warming up {Path(model).name}: one-token answer")
        one_token(server, base, model, deadline)


def one_token(server: Server, base: str, model: str, deadline: float) -> None:
    try:
        status, out = http("POST", base + "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            timeout=max(10.0, deadline - time.monotonic()), key=server.key)
    except urllib.error.HTTPError as e:
        if CB_MEMORY.search("\n".join(server.lines)):
            raise server.failure() from None
        raise JobError(f"the model server answered the health check with HTTP {e.code}: "
                       f"{e.read().decode(errors='replace')[:500]}", CRASH) from None
    except OSError as e:
        if not server.alive():
            raise server.failure() from None
        raise JobError(f"the model server did not answer a one-token request: {e}", CRASH) from None
    if status != 200 or not out.get("choices"):
        raise JobError(f"the model server gave no completion to a one-token request: {str(out)[:500]}", CRASH)


def generation_defaults(path: Path) -> dict:
    """The model's generation_config.json (token ids...): clients resend it with sampling switched on,
    because `transformers serve` only turns sampling off (temperature 0), never on."""
    try:
        gen = json.loads((path / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in gen.items() if not k.startswith("_") and k != "transformers_version"}


def main(spec: Spec, job: Job) -> dict:
    store = open_store(job.home)
    job_id = job.id
    try:
        model, adapter = resolve(spec, job.home)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT, "register the model (Models page) and submit again") from None
    device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
    label = model.name + (f"+{adapter.name}" if adapter else "")
    name = spec.name or f"{label} #{job_id}"
    merged = job.dir / "merged"
    remote = remote_code.trust(model.path, job.home)
    if remote_code.has_remote_code(model.path) and not remote:
        raise JobError(remote_code.refusal({"model": model.name}, job.home), BAD_INPUT)
    endpoints: dict[str, tuple[Path, dict]] = {}      # name -> (folder, meta)
    server = None
    try:
        # (endpoint name, folder, source); with an adapter, transformers also serves the base beside the
        # merged copy, so base and fine-tuned compare on one server (one CPU slot)
        model_path = Path(model.path)
        if (gguf := models.gguf_of(model)) is not None:   # a GGUF export (no adapter: refused at submit)
            job.message(f"{model.name}: dequantizing {gguf.name} with transformers' GGUF loader")
            model_path = job.dir / "gguf-model"
            if subprocess.run(engines.dequantize_command(gguf, model_path, job.home),
                              stdin=subprocess.DEVNULL, check=False).returncode != 0:
                raise JobError(UserError("err.gguf.dequantize", name=model.name), BAD_INPUT)
        served = [(name, merge_adapter(model, adapter, merged, job, remote) if adapter else model_path, label)]
        if adapter and spec.engine == "transformers":
            served.append((f"{spec.name} (base)" if spec.name else f"{model.name} #{job_id}",
                           Path(model.path), model.name))
        ids = [name if spec.engine == "lmdeploy" else str(path) for _, path, _ in served]   # what requests name
        host, address = server_host.bind()
        port = free_port(host)
        base = server_host.url(address, port)
        job.progress(0, 100, "%", f"starting {spec.engine} on {device}", force=True)
        key = server_auth.new_key()
        cb = spec.continuous_batching and spec.engine == "transformers"
        cb_percent, kv = kv_budget(spec, device, *free_memory(device)) if cb else (0.0, 0)
        if cb:
            job.message(f"continuous batching: KV cache and batch buffers sized within {kv / 2**30:.1f} GB "
                        f"({spec.cb_memory_share:.0%} of the memory free now)" +
                        (f", {spec.cb_blocks} blocks asked" if spec.cb_blocks else ""))
        server = Server(command(spec, [path for _, path, _ in served], host, port, device, ids[0], remote, cb_percent),
                        job, key, ids)
        t0 = time.monotonic()
        wait_ready(server, base, ids, spec.engine, t0 + spec.ready_timeout_s)
        for (ep_name, path, source), model_id in zip(served, ids):
            config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
            endpoints[ep_name] = path, endpoint_meta(
                base + "/v1", model_id, spec.engine, device, job_id, source, time.monotonic() - t0,
                config.get("max_position_embeddings"),
                tokenizer=str(path / "tokenizer.json") if (path / "tokenizer.json").exists() else "",
                continuous_batching=spec.continuous_batching, generation=generation_defaults(path),
                kv_cache_gb=round(kv / 2**30, 2) if cb else None,
                kv_quant=spec.kv_quant if spec.engine == "lmdeploy" else None,
                api_key=key, idle_stop_s=server_auth.idle_limit_s(device),
                **({"base_of": name} if ep_name != name else {}))
        register(job, endpoints)
        for ep_name, (_, meta) in endpoints.items():
            job.event("ready", endpoint=ep_name, url=meta["url"])
            job.message(f"ready: endpoint {ep_name!r} at {meta['url']} ({meta['load_s']} s to load)")
        counted, last = 0, time.monotonic()
        while server.alive():
            if server.requests != counted:
                counted, last = server.requests, time.monotonic()
                for _, meta in endpoints.values():        # the server's count: its log names no model
                    meta["requests"] = counted
                register(job, endpoints)
            if server_auth.idle_too_long(last, device, time.monotonic()):
                return idle_stop(job, server_auth.idle_limit_s(device), counted)
            time.sleep(IDLE_POLL_S)
        raise server.failure()
    finally:
        for ep_name in endpoints or [name]:
            store.delete("endpoint", ep_name, job_id=job_id)
        if server:
            server.stop()
        shutil.rmtree(merged, ignore_errors=True)


def idle_stop(job: Job, limit_s: float, requests: int) -> dict:
    """An idle CPU server ends itself (the job succeeds) so it does not hold the CPU slot forever."""
    job.message(f"stopped: no request for {limit_s / 60:.0f} min (a CPU server ends itself when idle, "
                "WORKBENCH_CPU_SERVER_IDLE_S); start it again from the Chat page")
    return {"stopped": "idle", "idle_s": limit_s, "requests": requests}


def register(job: Job, endpoints: dict[str, tuple[Path, dict]]) -> None:
    """Put (or update) each endpoint as the job owner's; the base first, so lists (newest first) show it under its
    fine-tuned one."""
    for ep_name, (path, meta) in reversed(endpoints.items()):
        job.register("endpoint", ep_name, path, meta)


if __name__ == "__main__":
    run(main, Spec)
