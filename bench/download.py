"""Download job vs a raw huggingface_hub.snapshot_download from the same local hub (tests/hubserver.py),
and bytes fetched again when a cancelled download is retried. Prints ratios (goals: >= 0.95x, <= 5%).

    .venv/bin/python -m bench.download [--mb 200]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its queue.py and datasets.py would shadow real modules
from backend.access import users  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200, help="size of the served repository")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    home = tmp / "workspace"
    os.environ.update(WORKBENCH_HOME=str(home), WORKBENCH_POLL_S="0.1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    from tests.fixtures.tiny_model import make_tiny_llama
    from tests.hubserver import Hub
    repo = make_tiny_llama(tmp / "repo")
    for i in range(4):                                   # weights-like shards
        (repo / f"shard-{i}.bin").write_bytes(os.urandom(a.mb * 1024 * 1024 // 4))
    from backend.runtime import queue
    from huggingface_hub import snapshot_download
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def burst():
        subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env, check=True,
                       capture_output=True)

    with Hub({"bench/model": repo}) as hub:
        total = sum(m["size"] for m in hub.repos["bench/model"].meta.values())
        t = time.perf_counter()
        snapshot_download("bench/model", local_dir=tmp / "raw", endpoint=hub.url)
        raw = time.perf_counter() - t
        t = time.perf_counter()
        job = queue.submit("download", {"source": "huggingface", "repo_id": "bench/model", "endpoint": hub.url}, home=home, owner="local")
        burst()
        wall = time.perf_counter() - t
        result = json.loads((home / "jobs" / str(job) / "result.json").read_text())
        assert result["ok"], result
        inner = result["seconds"]
        print(f"repository: {total / 1e6:.0f} MB in {len(hub.repos['bench/model'].files)} files")
        print(f"raw snapshot_download: {raw:.2f} s = {total / raw / 1e6:.0f} MB/s")
        print(f"download job (in the job, incl. checksums): {inner:.2f} s = {total / inner / 1e6:.0f} MB/s"
              f" -> {raw / inner:.2f}x raw")
        print(f"download job (submit to registered, incl. worker and process start): {wall:.2f} s"
              f" -> {raw / wall:.2f}x raw")
        # resume: cancel a throttled download half-way, then retry at full speed
        hub.throttle = 20e6
        sent0 = hub.bytes_sent
        worker = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            job = queue.submit("download", {"source": "huggingface", "repo_id": "bench/model", "endpoint": hub.url,
                                            "name": "model-resume"}, home=home, owner="local")
            while hub.bytes_sent - sent0 < total / 2:
                time.sleep(0.05)
            queue.cancel(job, home=home, by=users.OPERATOR)
            while queue.get(job, home=home, by=users.OPERATOR).state != "cancelled":
                time.sleep(0.05)
            first = hub.bytes_sent - sent0
            hub.throttle = 0
            retry = queue.retry(job, home=home, by=users.OPERATOR)
            while queue.get(retry, home=home, by=users.OPERATOR).state not in ("succeeded", "failed"):
                time.sleep(0.1)
            assert queue.get(retry, home=home, by=users.OPERATOR).state == "succeeded", queue.get(retry, home=home, by=users.OPERATOR)
        finally:
            worker.terminate()
            worker.wait()
        again = hub.bytes_sent - sent0 - total
        print(f"resume: cancelled after {first / 1e6:.0f} MB; fetched again {again / 1e6:.2f} MB = "
              f"{100 * again / total:.2f}% of the total (goal <= 5%)")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
