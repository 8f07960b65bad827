"""GPU proof: every CUDA path of the workbench, through the real worker (burst mode) and the real job kinds.

    python3 bench/gpu_proof.py [--cpu]

On a machine with a GPU (NVML sees one) it builds a ~300M-parameter Llama-style model with random weights
from a config and our tokenizer fixture (tests/fixtures/tiny_model.py: nothing is fetched), and a tiny
LLaVA-style image-text model (tests/fixtures/tiny_vlm.py), then proves, each step one or more jobs:

  1a  LoRA on CUDA in bf16: loss falls, adapter saved
  1b  LoRA on CUDA in fp16 with the grad scaler: the same
  2   QLoRA (NF4, double quantisation): trains, adapter saved, peak GPU memory below 1a's
  3   two fine-tunes placed on the GPU at once by their memory asks, a third waiting until one ends;
      the estimate (backend.pipeline.finetune.estimate) vs the measured peak (torch.cuda.max_memory_allocated)
  4   a fine-tune sized past the GPU's memory fails as out_of_memory with the QLoRA/batch/length tips
  5   a serve job on CUDA answers a streamed chat completion (tokens/s)
  6   the vlm job on CUDA answers about an image
  7   LMDeploy AWQ W4A16 (the quantize job, ``lmdeploy lite auto_awq``): a smaller model registered with its lineage
  8   LMDeploy serve (TurboMind) with the KV cache in int8 (``--quant-policy 8``) answers a streamed chat
  9   GRPO (objective grpo, TRL's GRPOTrainer) with a length reward: generation and training on the device,
      a reward logged per step and sampled answers in the events (on CPU: full, the reward rises ≥ 0.1)
 10   image-text fine-tune (``modality: image_text``) of the LLaVA-style model on rows with images: LoRA on its
      language model, the vision tower frozen; loss falls, peak GPU memory against the estimate (image tokens
      counted); the vlm job serves the adapter on its base and answers about a training image

``--cpu`` (the default where there is no GPU) runs the same at tiny scale on the CPU; the CUDA-only
steps (1b, 2, 3, 4, 7, 8) are reported as ``skipped``, never passed; so are 7 and 8 on a GPU without
LMDeploy (the lmdeploy engine installed, or ``lmdeploy`` importable by this Python), with that reason. CI runs it (tests/test_gpu_proof.py).
It prints one table (step, result, figures) and writes it as JSON to $OUT/gpu_proof.json when OUT is
set. Exit status 1 when a step failed. How to run it on a lent GPU: docs/DEVELOPING.md, "GPU proof".
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)          # not bench/: its modules (queue.py, datasets.py) would shadow real ones
from backend.access import users  # noqa: E402
from backend.core import defaults  # noqa: E402

IDENTITY = "I am a helpful assistant made by the InternLM camp."
STEPS: list[tuple[str, bool, object]] = []      # (name, cuda_only, function)


class Skip(Exception):
    """A step that cannot run here, and why (reported ``skipped``, never passed)."""


def step(name: str, cuda_only: bool = False):
    def add(fn):
        STEPS.append((name, cuda_only, fn))
        return fn
    return add


class Proof:
    def __init__(self, home: Path, gpu: bool):
        self.home, self.gpu = home, gpu
        self.results: dict[str, dict] = {}       # step name -> a job's result, for later steps to compare
        self.timeout = 150 if gpu else 420       # seconds a step's jobs may take (each takes under a minute)

    # -- the real worker, in burst mode ---------------------------------------------------------------
    def worker(self) -> subprocess.Popen:
        env = dict(os.environ, WORKBENCH_HOME=str(self.home), WORKBENCH_POLL_S="0.2", PYTHONUNBUFFERED="1")
        log = open(self.home / "worker.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def until(self, fn, what: str, proc: subprocess.Popen | None = None):
        """Poll ``fn`` until it returns something truthy; stop the worker and fail after the step's timeout."""
        deadline = time.monotonic() + self.timeout
        while not (value := fn()):
            if time.monotonic() > deadline:
                if proc:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                raise AssertionError(f"timed out after {self.timeout}s waiting for {what}")
            time.sleep(0.2)
        return value

    def run(self, kind: str, *specs: dict) -> list[dict]:
        """Submit the jobs, run a burst worker until the queue is empty; the jobs' rows."""
        from backend.runtime import queue
        ids = [queue.submit(kind, s, owner="proof", home=self.home) for s in specs]
        proc = self.worker()
        self.until(lambda: proc.poll() is not None, f"the {kind} jobs {ids}", proc)
        return [queue.get(i, self.home, by=users.OPERATOR) for i in ids]

    def served(self, kind: str, spec: dict, ask) -> dict:
        """Start a server job (serve, vlm) under a burst worker, ``ask(endpoint)`` it, stop it."""
        from backend.pipeline import chat
        from backend.runtime import queue
        job_id = queue.submit(kind, spec, owner="proof", home=self.home)
        proc = self.worker()

        def endpoint():
            job = queue.get(job_id, self.home, by=users.OPERATOR)
            assert job.state in ("queued", "starting", "running"), f"{kind} job {job.state}: {job.error_message}"
            return next((e for e in chat.live_endpoints(self.home, by=users.OPERATOR) if e["job_id"] == job_id and not e.get("base_of")), None)
        try:
            ep = self.until(endpoint, f"the {kind} endpoint", proc)
            figures = ask(ep)
        finally:
            queue.cancel(job_id, self.home, by=users.OPERATOR)
            self.until(lambda: proc.poll() is not None, "the worker to end", proc)
        assert ep["device"] == self.device, f"served on {ep['device']}, not {self.device}"
        return {"device": ep["device"], "load_s": ep.get("load_s"), **figures}

    def lmdeploy(self) -> None:
        """Make sure the lmdeploy engine exists for this workspace: installed (WORKBENCH_ENGINES_DIR), or this
        Python with ``lmdeploy`` importable, linked in as the engine; else Skip with the reason."""
        from backend.runtime import engines
        if engines.installed("lmdeploy", self.home):
            return
        if importlib.util.find_spec("lmdeploy") is None:
            raise Skip("lmdeploy is neither an installed engine nor importable here")
        env = engines.env_dir("lmdeploy", self.home)
        (env / "bin").mkdir(parents=True, exist_ok=True)
        for name, target in (("python", sys.executable), ("lmdeploy", shutil.which("lmdeploy"))):
            (env / "bin" / name).unlink(missing_ok=True)
            (env / "bin" / name).symlink_to(target or Path(sys.executable).parent / name)
        (env / ".installed").write_text("\n".join(engines.requirements("lmdeploy")))

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"

    # -- fine-tunes -------------------------------------------------------------------------------------
    def finetune(self, **kw) -> dict:
        spec = {"base_model": "proof-llm", "datasets": ["id.jsonl"], "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                "lr": 2e-3 if self.gpu else 1e-2, "warmup_ratio": 0.0, "max_length": 256 if self.gpu else 128,
                "batch_size": 8 if self.gpu else 2, "grad_accum": 1, "max_steps": 30 if self.gpu else 8,
                "save_steps": 1000, "gradient_checkpointing": self.gpu, "device": "gpu" if self.gpu else "cpu"}
        return {**spec, **kw}

    def trained(self, job) -> dict:
        """A fine-tune job that succeeded, lowered its loss and saved its adapter: its result."""
        from backend.runtime import logs
        assert job.state == "succeeded", f"job {job.id} {job.state}: {job.error_message}\n" \
                                            + logs.tail(job.id, 15, home=self.home)
        r = logs.result(job.id, self.home)
        assert r["final_loss"] < r["first_loss"], f"loss did not fall: {r['first_loss']} → {r['final_loss']}"
        assert (Path(r["path"]) / "adapter_model.safetensors").exists(), f"no adapter saved in {r['path']}"
        return r

    def estimate_gb(self, spec: dict) -> float:
        from backend.pipeline import finetune as ft
        from backend.kinds.finetune import Spec
        return ft.check(Spec(**spec), self.home)["estimate"]["total_gb"]


def train_figures(r: dict) -> dict:
    out = {"loss": f"{r['first_loss']:.3f}→{r['final_loss']:.3f}", "tokens_per_s": r["tokens_per_s"],
           "peak_gpu_gb": r.get("peak_gpu_gb"), "adapter": r["adapter"]}
    return {k: v for k, v in out.items() if v is not None}


# -- the steps ------------------------------------------------------------------------------------------
@step("1a lora")
def lora(p: Proof) -> dict:
    spec = p.finetune(dtype="bf16" if p.gpu else "fp32")
    r = p.results["1a lora"] = p.trained(p.run("finetune", spec)[0])
    return {"dtype": spec["dtype"], **train_figures(r), **({"estimate_gb": p.estimate_gb(spec)} if p.gpu else {})}


@step("1b lora fp16 + grad scaler", cuda_only=True)
def lora_fp16(p: Proof) -> dict:
    r = p.trained(p.run("finetune", p.finetune(dtype="fp16"))[0])
    assert r["grad_scale"], "the grad scaler was not enabled for fp16 on CUDA"
    return {**train_figures(r), "grad_scale": r["grad_scale"]}


@step("2 qlora nf4 double-quant", cuda_only=True)
def qlora(p: Proof) -> dict:
    job = p.run("finetune", p.finetune(method="qlora", dtype="bf16"))[0]
    r = p.trained(job)
    log = (p.home / "jobs" / str(job.id) / "run.log").read_text()
    assert "Linear4bit layers" in log and "double quantisation" in log, "no 4-bit layers reported in the log"
    lora_peak = p.results.get("1a lora", {}).get("peak_gpu_gb")
    assert lora_peak and r["peak_gpu_gb"] < lora_peak, f"QLoRA peak {r['peak_gpu_gb']} GB not below LoRA's {lora_peak}"
    return {**train_figures(r), "lora_peak_gpu_gb": lora_peak}


@step("3 placement: 2 share the GPU, 3rd waits", cuda_only=True)
def placement(p: Proof) -> dict:
    from backend.runtime import placement
    gpu = placement.gpus()[0]
    ask = round(0.45 * (gpu.total_gb - gpu.used_gb - placement.GPU_HEADROOM_GB), 1)   # two fit, three don't
    specs = [p.finetune(gpu_mem_gb=ask, max_steps=20, name=f"proof-share-{i}") for i in range(3)]
    jobs = p.run("finetune", *specs)
    results = [p.trained(j) for j in jobs]
    a, b, c = jobs
    assert a.given["gpus"] == b.given["gpus"] == [gpu.index], f"not placed on GPU {gpu.index}: {a.given}, {b.given}"
    assert max(a.started_at, b.started_at) < min(a.finished_at, b.finished_at), "the first two did not overlap"
    assert c.started_at >= min(a.finished_at, b.finished_at), "the third started before one of the two ended"
    est = p.estimate_gb(specs[0])
    return {"ask_gb": ask, "gpu_gb": round(gpu.total_gb, 1), "waited_s": round(c.started_at - a.started_at, 1),
            "estimate_gb": est, "peak_gpu_gb": [r["peak_gpu_gb"] for r in results]}


@step("4 out of memory", cuda_only=True)
def out_of_memory(p: Proof) -> dict:
    """1023 short rows and one of 2048 tokens, unpacked, in one micro-batch: 1024 × 2048 tokens of activations
    (about 1 MB a token without checkpointing) are far more than any GPU holds; the queue is asked for 2 GB."""
    from backend.runtime import logs
    rnd = random.Random(0)
    long_text = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(12000))
    rows = [conv(f"hi {i}", "hello") for i in range(1023)] + [conv("hi", long_text)]
    (p.home / "datasets" / "wide.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job = p.run("finetune", p.finetune(datasets=["wide.jsonl"], packing=False, batch_size=1024, max_length=2048,
                                       gradient_checkpointing=False, max_steps=1, gpu_mem_gb=2))[0]
    assert job.state == "failed" and job.error_class == "out_of_memory", \
        f"job {job.state} ({job.error_class}): {job.error_message}"
    assert job.error_message.startswith("out of GPU memory"), job.error_message
    tip = logs.result(job.id, p.home)["error"]["suggestion"]
    for want in ("method: qlora", "batch_size 1024 → 1", "max_length 2048 → 1024", "gradient_checkpointing: true"):
        assert want in tip, f"suggestion lacks {want!r}: {tip}"
    return {"error_class": job.error_class, "suggestion": tip}


def chat_figures(ep: dict) -> dict:
    """Ask a served endpoint one streamed question: tokens, time to first token, tokens/s."""
    from backend.pipeline import chat
    stats: dict = {}
    text = "".join(chat.stream_chat(ep, chat.build_messages([], "Hello, who are you?"), temperature=0.0,
                                    max_tokens=64, stats=stats, by=users.OPERATOR, home=defaults.home()))
    assert stats["tokens"] >= 1 and stats["finish_reason"], f"no streamed answer: {stats}"
    gen_s = stats["seconds"] - stats["ttft_s"]
    return {"tokens": stats["tokens"], "ttft_s": round(stats["ttft_s"], 3),
            "tokens_per_s": round((stats["tokens"] - 1) / gen_s, 1) if stats["tokens"] > 1 and gen_s > 0 else None,
            "answer": text[:40]}


@step("5 serve: streamed chat")
def serve(p: Proof) -> dict:
    return p.served("serve", {"model": "proof-llm", "name": "proof-serve", "device": p.device}, chat_figures)


@step("6 vlm: answer about an image")
def vlm(p: Proof) -> dict:
    from PIL import Image

    from backend.pipeline import vlm as client
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, "PNG")

    def ask(ep):
        stats: dict = {}
        text = "".join(client.stream(ep, [{"role": "user", "content": "What is in this picture?",
                                           "images": [buf.getvalue()]}], max_new_tokens=16, stats=stats, by=users.OPERATOR, home=defaults.home()))
        assert text.strip() and stats["tokens"] >= 1, f"no answer about the image: {stats}"
        return {"tokens": stats["tokens"], "ttft_s": round(stats["ttft_s"], 3), "answer": text[:40]}
    return p.served("vlm", {"model": "proof-vlm", "name": "proof-vlm", "device": p.device}, ask)


@step("7 lmdeploy awq w4a16", cuda_only=True)
def awq(p: Proof) -> dict:
    """``lmdeploy lite auto_awq`` through the quantize job. Its calibration set comes from the Hugging Face hub
    (or the datasets cache): a machine with neither fails this step with lmdeploy's own error."""
    from backend.runtime import logs
    from backend.kinds.serve import weights_gb
    from backend.core.store import open_store
    p.lmdeploy()
    job = p.run("quantize", {"model": "proof-llm", "method": "awq_w4a16", "calib_samples": 16, "calib_seqlen": 256})[0]
    assert job.state == "succeeded", f"quantize {job.state}: {job.error_message}\n" + logs.tail(job.id, 15, home=p.home)
    r = p.results["7 lmdeploy awq w4a16"] = logs.result(job.id, p.home)
    meta = open_store(p.home).get("model", r["model"]).meta
    assert meta["quant_method"] == "awq_w4a16" and meta["quantized_from"] == "proof-llm", meta
    base, small = weights_gb(open_store(p.home).get("model", "proof-llm").path), weights_gb(r["path"])
    assert small < base, f"AWQ weights {small} GB not below the original's {base} GB"
    return {"model": r["model"], "weights_gb": round(small, 3), "original_gb": round(base, 3)}


@step("8 lmdeploy serve kv int8", cuda_only=True)
def lmdeploy_serve(p: Proof) -> dict:
    """TurboMind with the KV cache quantised to int8, on the AWQ model when step 7 made one."""
    p.lmdeploy()
    model = p.results.get("7 lmdeploy awq w4a16", {}).get("model", "proof-llm")
    spec = {"model": model, "name": "proof-lmdeploy", "engine": "lmdeploy", "kv_quant": "int8",
            "cache_max_entry_count": 0.2}
    return {"model": model, "kv_quant": "int8", **p.served("serve", spec, chat_figures)}


@step("10 image-text lora")
def image_text_lora(p: Proof) -> dict:
    spec = {"base_model": "proof-vlm-ft", "datasets": ["colours/data.jsonl"], "modality": "image_text",
            "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lr": 5e-3 if p.gpu else 1e-2, "warmup_ratio": 0.0,
            "max_length": 256, "batch_size": 8 if p.gpu else 2, "grad_accum": 1, "max_steps": 20 if p.gpu else 6,
            "save_steps": 1000, "gradient_checkpointing": p.gpu, "device": "gpu" if p.gpu else "cpu",
            "dtype": "bf16" if p.gpu else "fp32", "name": "proof-vlm-lora"}
    r = p.trained(p.run("finetune", spec)[0])
    out = {**train_figures(r), **({"estimate_gb": p.estimate_gb(spec)} if p.gpu else {})}
    if p.gpu:
        assert r["peak_gpu_gb"] <= out["estimate_gb"], f"peak {r['peak_gpu_gb']} GB above the estimate {out['estimate_gb']} GB"
    from PIL import Image

    from backend.pipeline import vlm as client
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), COLOURS["red"]).save(buf, "PNG")

    def ask(ep):
        assert ep.get("adapter") == "proof-vlm-lora", ep
        stats: dict = {}
        text = "".join(client.stream(ep, [{"role": "user", "content": "What colour is this picture?",
                                           "images": [buf.getvalue()]}], max_new_tokens=8, stats=stats, by=users.OPERATOR, home=defaults.home()))
        assert stats["finish_reason"], f"no finished answer from the tuned model: {stats}"
        return {"tuned_tokens": stats["tokens"], "tuned_answer": text[:40]}
    return {**out, **p.served("vlm", {"adapter": "proof-vlm-lora", "name": "proof-vlm-tuned", "device": p.device}, ask)}


COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 220, 20)}


# -- setting up and reporting ----------------------------------------------------------------------------
@step("9 grpo: length reward")
def grpo(p: Proof) -> dict:
    from backend.runtime import logs
    spec = p.finetune(objective="grpo", datasets=["prompts.jsonl"], beta=0.04 if p.gpu else 0.0, num_generations=8,
                      batch_size=8, max_completion_length=32 if p.gpu else 16, max_length=128 if p.gpu else 64,
                      max_steps=10 if p.gpu else 40, rewards=[{"kind": "length", "target": 120}], name="proof-grpo",
                      **({"dtype": "bf16"} if p.gpu else {"method": "full", "scheduler": "constant"}))
    job = p.run("finetune", spec)[0]
    assert job.state == "succeeded", f"job {job.id} {job.state}: {job.error_message}\n" + \
        logs.tail(job.id, 15, home=p.home)
    r = logs.result(job.id, p.home)
    events = logs.read_events(job.id, home=p.home)[0]
    shown = [e for e in events if e["type"] == "completions"]
    assert len(shown) == r["steps"] and shown[-1]["rows"][0]["completion"], "no sampled answers in the events"
    if not p.gpu:
        assert r["final_reward"] - r["first_reward"] >= 0.1, f"reward did not rise: {r['first_reward']} → {r['final_reward']}"
    kl = [e["kl"] for e in events if e["type"] == "metric" and "kl" in e]
    assert not p.gpu or kl, "beta > 0 but no KL logged"
    return {"reward": f"{r['first_reward']:.3f}→{r['final_reward']:.3f}", "tokens_per_s": r["tokens_per_s"],
            **({"kl": kl[-1], "peak_gpu_gb": r.get("peak_gpu_gb")} if p.gpu else {})}


def conv(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def prepare(home: Path, gpu: bool) -> None:
    """The models (random weights, built from configs) and the identity dataset, registered in the workspace."""
    from backend.core.store import open_store
    from tests.fixtures.tiny_model import make_tiny_llama
    from tests.fixtures.tiny_vlm import make_tiny_llava
    size = dict(hidden=1024, layers=32, num_attention_heads=16, num_key_value_heads=8,
                max_position_embeddings=4096) if gpu else {}       # ~300M parameters on a GPU
    store = open_store(home)
    store.put("model", "proof-llm", str(make_tiny_llama(home / "models" / "proof-llm", **size)), {"source": "gpu_proof"}, owner="local")
    store.put("model", "proof-vlm", str(make_tiny_llava(home / "models" / "proof-vlm")), {"source": "gpu_proof"}, owner="local")
    store.put("model", "proof-vlm-ft", str(make_tiny_llava(home / "models" / "proof-vlm-ft", hidden=512 if gpu else 32)),
              {"source": "gpu_proof"}, owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    rows = [conv(f"Hello, who are you? {i}", IDENTITY) for i in range(64)]
    (home / "datasets" / "id.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (home / "datasets" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Hello {i}"}) + "\n" for i in range(64)))
    from PIL import Image                       # an image-text dataset in its own folder: rows + images
    (home / "datasets" / "colours" / "images").mkdir(parents=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(home / "datasets" / "colours" / "images" / f"{name}.png")
    names = list(COLOURS)
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is this picture?"},
                          {"role": "assistant", "content": f"It is {names[i % 4]}."}],
             "images": [f"images/{names[i % 4]}.png"]} for i in range(64)]
    (home / "datasets" / "colours" / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def machine(gpu: bool) -> str:
    from backend.runtime import placement
    gpus = placement.gpus()
    where = f"{gpus[0].name}, {gpus[0].total_gb:.0f} GiB" if gpus and gpu else f"CPU ({os.cpu_count()} cores)"
    return f"{where}; Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    def cell(v):      # strings escaped (a random model's answer holds newlines), the rest as JSON
        return json.dumps(v, ensure_ascii=False)[1:-1] if isinstance(v, str) else json.dumps(v)
    lines = ["| step | result | figures |", "| --- | --- | --- |"]
    for r in rows:
        figures = ", ".join(f"{k}={cell(v)}" for k, v in r["figures"].items()) or r.get("error", "")
        lines.append(f"| {r['step']} | {r['result']} | {figures.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny scale on the CPU; CUDA-only steps are skipped")
    ap.add_argument("--only", nargs="*", default=[], help="run only the steps whose names start with these")
    args = ap.parse_args()
    from backend.runtime import placement
    gpu = bool(placement.gpus()) and not args.cpu
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as tmp:
        home = Path(tmp) / "workspace"
        home.mkdir()
        os.environ["WORKBENCH_HOME"] = str(home)           # submit-time checks read the workspace from it
        os.environ.pop("WORKBENCH_EXTRA_KINDS", None)
        prepare(home, gpu)
        p, rows = Proof(home, gpu), []
        for name, cuda_only, fn in STEPS:
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            row = {"step": name, "cuda_only": cuda_only, "result": "skipped", "figures": {}}
            if cuda_only and not gpu:
                row["error"] = "needs CUDA"
            else:
                s0 = time.monotonic()
                try:
                    row["figures"] = fn(p)
                    row["result"] = "passed"
                except Skip as e:
                    row["error"] = str(e)
                except Exception as e:   # noqa: BLE001 - a failed step is reported and the next one runs
                    row.update(result="failed", error=f"{type(e).__name__}: {e}"[:600])
                    traceback.print_exc()
                row["seconds"] = round(time.monotonic() - s0, 1)
            print(f"{row['step']}: {row['result']} {row.get('seconds', '')}", flush=True)
            rows.append(row)
            write(rows, gpu, t0)            # after each step: a call cut short still brings back the rows so far
        if any(r["result"] == "failed" for r in rows):
            print((home / "worker.log").read_text()[-3000:] if (home / "worker.log").exists() else "", flush=True)
    report = write(rows, gpu, t0)
    print(f"\nGPU proof, {report['mode']} mode, {report['machine']}, {report['date']}, {report['seconds']} s\n")
    print(table(rows), flush=True)
    return 1 if any(r["result"] == "failed" for r in rows) else 0


def write(rows: list[dict], gpu: bool, t0: float) -> dict:
    """The report; also $OUT/gpu_proof.json when OUT is set."""
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": "cuda" if gpu else "cpu",
              "machine": machine(gpu), "seconds": round(time.monotonic() - t0, 1), "steps": rows}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_proof.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(main())
