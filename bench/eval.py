"""Wall time of the evaluate job (submit → worker → OpenCompass → results) against running the same
OpenCompass config directly with the engine's python (goal: ≤ 1.1×).

    .venv/bin/python bench/eval.py [--items 8] [--repeat 1]

Needs the opencompass engine (WORKBENCH_ENGINES_DIR, default .cache/envs). Uses a tiny random model
and the bundled MCQ + QA samples; prints both times and their ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)          # not bench/: its modules (queue.py) would shadow the stdlib
from backend.access import users  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("WORKBENCH_ENGINES_DIR", str(ROOT / ".cache" / "envs"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    home = tmp / "workspace"
    home.mkdir()
    os.environ["WORKBENCH_HOME"] = str(home)
    from backend.pipeline import evaluate as ev
    from backend.runtime import engines, queue
    from tests.fixtures.tiny_model import make_tiny_llama
    if not ev.engine_ready(home):
        sys.exit(f"the opencompass engine is not installed in {engines.env_dir('opencompass', home)}")
    model = make_tiny_llama(tmp / "tiny")
    samples = ROOT / "assets" / "datasets"
    spec = {"models": [{"name": "tiny", "path": str(model)}], "max_out_len": 16, "batch_size": 8,
            "datasets": [{"name": "easy_mcq", "path": str(samples / "easy_mcq.jsonl"), "limit": a.items},
                         {"name": "easy_qa", "path": str(samples / "easy_qa.jsonl"), "limit": a.items}]}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    job_times, direct_times = [], []
    for i in range(a.repeat):
        t0 = time.perf_counter()
        job_id = ev.submit(spec, home=home, owner="local")
        subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        job_times.append(time.perf_counter() - t0)
        job = queue.get(job_id, home, by=users.OPERATOR)
        assert job.state == "succeeded", job.error_message
        # the same config, run directly (the job folder's config.py; the compat tokenizer it points to)
        config = home / "jobs" / str(job_id) / "config.py"
        work = tmp / f"direct{i}"
        work.mkdir()
        t0 = time.perf_counter()
        subprocess.run([str(engines.python("opencompass", home)), "-m", "opencompass.cli.main", str(config),
                        "-w", str(work / "out")], cwd=work, check=True, capture_output=True,
                       env=dict(env, COMPASS_DATA_CACHE=str(home / "opencompass_data")))
        direct_times.append(time.perf_counter() - t0)
    j, d = min(job_times), min(direct_times)
    print(f"evaluate job   : {j:7.1f} s  (runs: {', '.join(f'{x:.1f}' for x in job_times)})")
    print(f"opencompass CLI: {d:7.1f} s  (runs: {', '.join(f'{x:.1f}' for x in direct_times)})")
    print(f"ratio job/direct: {j / d:.2f}x  (goal <= 1.10x)")


if __name__ == "__main__":
    main()
