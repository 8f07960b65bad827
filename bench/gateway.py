"""Gateway benchmark: the same streamed chat through the app's /v1 gateway and straight to the model server.

    .venv/bin/python bench/gateway.py [--model DIR] [--tokens 48] [--clients 8] [--repeat 3]

A real serve job (continuous batching, the bundled SmolLM2 by default), the real app (st.App under
uvicorn) on a free port and a key made with backend.access.apikeys. Rounds alternate direct / gateway so load
drifts hit both alike; each figure is the median of --repeat rounds. Prints, for 1 and N clients:
aggregate tokens/s (goal: gateway >= 0.95x direct) and time to first token (goal: <= +20 ms), and the
app's CPU seconds per token streamed through it.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its files (queue.py...) would shadow the standard library
from backend.access import apikeys
from backend.pipeline.deploy import concurrent
from bench.chat import serve, setup, stop
from bench.viewers import cpu_s
from tests.conftest import app_healthy, free_port, start_app, wait_for


def main() -> None:
    args, home, _ = setup("gateway", 48, 3)
    worker, ep = serve(home, "bench", cb=True)
    port = free_port()
    app = start_app(home, port, WORKBENCH_API_RATE_PER_MIN=0)           # the bench measures, not the limit
    try:
        wait_for(lambda: app_healthy(f"http://127.0.0.1:{port}"), 120, 0.5, "the app to answer")
        via = {"url": f"http://127.0.0.1:{port}/v1", "model": ep["name"], "api_key": apikeys.create("bench", "local", home=home)}
        for e in (ep, via):
            concurrent(e, 4, 1)                                           # warm-up, both paths
        for clients in (1, args.clients):
            rounds: dict[str, list] = {"direct": [], "gateway": []}
            cpu, tokens = 0.0, 0
            for _ in range(args.repeat):
                rounds["direct"].append(concurrent(ep, args.tokens, clients))
                c0, t0 = cpu_s(app.pid), time.perf_counter()
                rounds["gateway"].append(concurrent(via, args.tokens, clients))
                cpu += cpu_s(app.pid) - c0
                tokens += round(rounds["gateway"][-1][0] * (time.perf_counter() - t0))
            (d_tps, d_ttft), (g_tps, g_ttft) = [(statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
                                                for rs in rounds.values()]
            print(f"{clients} client(s): direct {d_tps:6.1f} tok/s, TTFT {d_ttft * 1000:5.0f} ms | gateway "
                  f"{g_tps:6.1f} tok/s, TTFT {g_ttft * 1000:5.0f} ms -> {g_tps / d_tps:.3f}x throughput (goal >= 0.95x), "
                  f"{(g_ttft - d_ttft) * 1000:+.0f} ms to first token (goal <= +20 ms); "
                  f"app {cpu / max(tokens, 1) * 1000:.2f} CPU-ms per token streamed")
    finally:
        app.terminate()
        app.wait(30)
        stop(worker)


if __name__ == "__main__":
    main()
