"""The GPU proof's CPU mode (bench/gpu_proof.py --cpu), so the script can't rot between GPU sessions: the
steps that run on a CPU pass through the real worker and jobs, the CUDA-only ones are reported skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CUDA_ONLY = {"1b lora fp16 + grad scaler", "2 qlora nf4 double-quant", "3 placement: 2 share the GPU, 3rd waits",
             "4 out of memory", "7 lmdeploy awq w4a16", "8 lmdeploy serve kv int8"}


@pytest.mark.slow
def test_cpu_mode_passes_the_cpu_steps_and_skips_the_cuda_ones(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    proc = subprocess.run([sys.executable, "bench/gpu_proof.py", "--cpu"], cwd=ROOT, env={**env, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_proof.json").read_text())
    assert report["mode"] == "cpu"
    got = {s["step"]: s["result"] for s in report["steps"]}
    assert got == {"1a lora": "passed", "5 serve: streamed chat": "passed", "6 vlm: answer about an image": "passed",
                   "9 grpo: length reward": "passed",
                   "10 image-text lora": "passed",
                   **{name: "skipped" for name in CUDA_ONLY}}
    assert all(s["cuda_only"] == (s["step"] in CUDA_ONLY) for s in report["steps"])
    figures = {s["step"]: s["figures"] for s in report["steps"]}
    assert figures["5 serve: streamed chat"]["tokens"] >= 1 and figures["5 serve: streamed chat"]["device"] == "cpu"
    assert figures["6 vlm: answer about an image"]["tokens"] >= 1
    loss = figures["1a lora"]["loss"].split("→")
    assert float(loss[1]) < float(loss[0])
    assert figures["10 image-text lora"]["device"] == "cpu" and "→" in figures["10 image-text lora"]["loss"]
    assert "| step | result | figures |" in proc.stdout
    assert "| 2 qlora nf4 double-quant | skipped | needs CUDA |" in proc.stdout
