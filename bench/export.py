"""Export job vs llama.cpp's convert_hf_to_gguf.py run directly on the same model (SmolLM2-135M-Instruct, the
bundled model): wall time and bytes, f16 and q8_0. Goal: the job's conversion >= 1.0x the script's speed,
the same bytes (the job runs that script; its wall time also counts the worker, the job process and registering).

    .venv/bin/python -m bench.export
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its queue.py and datasets.py would shadow real modules


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    home = tmp / "workspace"
    os.environ.update(WORKBENCH_HOME=str(home), WORKBENCH_POLL_S="0.1",
                      WORKBENCH_LLAMA_CPP_DIR=os.environ.get("WORKBENCH_LLAMA_CPP_DIR", str(ROOT / ".cache" / "llama.cpp")))
    from backend.pipeline import export
    from backend.runtime import queue
    from backend.workspace import models
    src = models.ensure_bundled(home, log=lambda *a: None)
    conv = export.converter(home)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    print(f"{'type':<6} {'script s':>9} {'job convert s':>14} {'job wall s':>11} {'speed':>7} {'MB':>7}  same bytes")
    for outtype in ("f16", "q8_0"):
        raw = tmp / f"raw-{outtype}.gguf"
        t = time.perf_counter()
        subprocess.run(export.command(conv, src, raw, outtype), check=True, capture_output=True)
        direct = time.perf_counter() - t
        t = time.perf_counter()
        job = queue.submit("export", {"model": models.BUNDLED_NAME, "outtype": outtype}, home=home, owner="local")
        subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        wall = time.perf_counter() - t
        result = json.loads((home / "jobs" / str(job) / "result.json").read_text())
        assert result["ok"], result
        out = Path(result["path"])
        print(f"{outtype:<6} {direct:>9.1f} {result['convert_s']:>14.1f} {wall:>11.1f} {direct / result['convert_s']:>6.2f}x "
              f"{out.stat().st_size / 1e6:>7.1f}  {sha(out) == sha(raw)}")


if __name__ == "__main__":
    main()
