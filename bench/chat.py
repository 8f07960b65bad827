"""Chat serving benchmark: a real `serve` job (through a burst worker's code path) against in-process generate.

    .venv/bin/python bench/chat.py [--model DIR] [--tokens 48] [--clients 8] [--repeat 5]

Prints, on the same model and prompt, greedy decoding (each figure the median of --repeat rounds):
  single-stream tokens/s through the serve job vs in-process `model.generate`  (goal >= 0.9x)
  aggregate tokens/s with N concurrent clients vs 1, continuous batching on     (goal >= 2x)
  time to first token for both.
Default model: the bundled SmolLM2-135M-Instruct (backend.workspace.models.ensure_bundled).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its files (queue.py...) would shadow the standard library
from backend.pipeline.deploy import PROMPT, median_of
from backend.pipeline.deploy import concurrent as through_server
from backend.access import users


def in_process(path: Path, tokens: int, repeat: int) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    kw = dict(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    with torch.inference_mode():
        model.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})        # warm-up

        def once() -> tuple[float, float]:
            t0 = time.perf_counter()
            out = model.generate(**kw)
            total = time.perf_counter() - t0
            streamer = TextIteratorStreamer(tok, skip_prompt=True)
            t1 = time.perf_counter()
            th = threading.Thread(target=model.generate, kwargs={**kw, "max_new_tokens": 2, "min_new_tokens": 2,
                                                              "streamer": streamer})
            th.start()
            next(iter(streamer))
            ttft = time.perf_counter() - t1
            th.join()
            return (out.shape[1] - ids["input_ids"].shape[1]) / total, ttft
        return median_of(repeat, once)


def serve(home: Path, model: str, cb: bool) -> tuple[subprocess.Popen, dict]:
    worker, eps = serve_many(home, [model], cb)
    return worker, eps[0]


def serve_many(home: Path, models: list[str], cb: bool) -> tuple[subprocess.Popen, list[dict]]:
    """A serve job per model and one worker with a CPU slot for each; their endpoints once all are live."""
    from backend.pipeline import chat
    from backend.runtime import queue
    ids = [queue.submit("serve", {"model": m, "continuous_batching": cb}, home=home, owner="local") for m in models]
    worker = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env=dict(os.environ, WORKBENCH_HOME=str(home), WORKBENCH_CPU_SLOTS=str(len(ids))))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        eps = [chat.serve_job_endpoint(i, home) for i in ids]
        if all(eps):
            return worker, eps
        failed = [i for i in ids if queue.get(i, home, by=users.OPERATOR).state in ("failed", "cancelled", "lost")]
        if failed:
            break
        time.sleep(0.5)
    worker.terminate()
    raise SystemExit(f"serve jobs {ids} did not come up: " + "; ".join(
        str(queue.get(i, home, by=users.OPERATOR).error_message) for i in ids))


def stop(worker: subprocess.Popen) -> None:
    worker.terminate()
    worker.wait(60)


def setup(prog: str, tokens: int, repeat: int):
    """Arguments, a fresh workspace and the model registered in it as "bench": (args, home, model folder)."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--model", help="a model folder (default: the bundled SmolLM2)")
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=repeat)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix=f"bench-{prog}-"))
    os.environ["WORKBENCH_HOME"] = str(home)
    from backend.core.store import open_store
    if args.model:
        path = Path(args.model).resolve()
    else:
        from backend.workspace.models import ensure_bundled
        path = ensure_bundled(home=home, log=lambda *a: None)
    open_store(home).put("model", "bench", str(path), owner="local")
    return args, home, path


def main() -> None:
    args, home, path = setup("chat", 48, 5)

    base_tps, base_ttft = in_process(path, args.tokens, args.repeat)
    print(f"in-process generate: {base_tps:6.1f} tok/s, TTFT {base_ttft * 1000:6.0f} ms")

    worker, ep = serve(home, "bench", cb=False)
    try:
        through_server(ep, 4, 1)                      # warm-up
        tps1, ttft1 = median_of(args.repeat, lambda: through_server(ep, args.tokens, 1))
    finally:
        stop(worker)
    print(f"serve job, 1 stream: {tps1:6.1f} tok/s, TTFT {ttft1 * 1000:6.0f} ms  -> {tps1 / base_tps:.2f}x "
          f"of in-process (goal >= 0.9x)")

    worker, ep = serve(home, "bench", cb=True)
    try:
        through_server(ep, 4, 1)
        cb1, cb_ttft1 = median_of(args.repeat, lambda: through_server(ep, args.tokens, 1))
        cbn, cb_ttftn = median_of(args.repeat, lambda: through_server(ep, args.tokens, args.clients))
    finally:
        stop(worker)
    print(f"continuous batching, 1 client:  {cb1:6.1f} tok/s, TTFT {cb_ttft1 * 1000:6.0f} ms")
    print(f"continuous batching, {args.clients} clients: {cbn:6.1f} tok/s aggregate, mean TTFT "
          f"{cb_ttftn * 1000:6.0f} ms  -> {cbn / cb1:.2f}x of 1 client (goal >= 2x)")


if __name__ == "__main__":
    main()
