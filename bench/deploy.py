"""Deploy benchmark: the bundled SmolLM2 against its bitsandbytes NF4 copy (the quantize job), each served
by a real serve job with continuous batching and measured with backend.pipeline.deploy (the Deploy page's code).

    .venv/bin/python bench/deploy.py [--model DIR] [--tokens 32] [--clients 8] [--repeat 3]

Both servers run at once (a CPU slot each) and are measured in turns, --repeat rounds, medians: on a
shared machine whose load drifts, measuring one after the other would favour the second. Prints
weights on disk, server memory, TTFT, tokens/s with 1 and N clients, each as a ratio of the original's.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its files would shadow the standard library

from bench.chat import serve_many, setup, stop
from backend.access import users


def quantize(home: Path, model: str) -> str:
    from backend.runtime import queue
    job_id = queue.submit("quantize", {"model": model}, home=home, owner="local")
    subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, check=True,
                   env=dict(os.environ, WORKBENCH_HOME=str(home)), stdout=subprocess.DEVNULL)
    job = queue.get(job_id, home, by=users.OPERATOR)
    if job.state != "succeeded":
        raise SystemExit(f"quantize failed: {job.error_message}")
    return f"{model}-bnb-nf4"


def main() -> None:
    args, home, _ = setup("deploy", 32, 3)
    from backend.pipeline import deploy
    from backend.core.store import open_store
    t0 = time.monotonic()
    variants = ["bench", quantize(home, "bench")]
    print(f"quantized (bitsandbytes NF4) in {time.monotonic() - t0:.0f} s")
    worker, eps = serve_many(home, variants, cb=True)      # both up at once, measured in turns
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for _ in range(args.repeat):
            for name, ep in zip(variants, eps):
                runs[name].append(deploy.measure(ep, args.tokens, args.clients, 1, home=home))
    finally:
        stop(worker)
    rows = {name: {**{k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))
                      and not isinstance(rs[0][k], bool)},
                   "weights_mb": deploy.weights_bytes(open_store(home).get("model", name).path) / 2**20}
            for name, rs in runs.items()}
    n = f"tps_{args.clients}"
    cols = [("weights_mb", "weights MB"), ("memory_gb", "server GB"), ("ttft_ms", "TTFT ms"), ("tps_1", "tok/s 1"),
            (n, f"tok/s {args.clients}")]
    print(f"{'variant':12}" + "".join(f"{h:>22}" for _, h in cols) + f"{'KV budget GB':>14}")
    base = rows["bench"]
    for name, r in rows.items():
        cells = "".join(f"{r[k]:>14.1f} ({r[k] / base[k]:.2f}x)" for k, _ in cols)
        print(f"{'original' if name == 'bench' else 'nf4':12}{cells}{r['kv_cache_gb']:>14}")


if __name__ == "__main__":
    main()
