"""Set-up steps the ``workbench`` launcher runs: ``python -m backend.runtime.provision <step>``.

  bundled       prepare and register the bundled SmolLM2-135M-Instruct (once; reused after)
  test-engines  create the engine environments the test suite needs, with the real engine_install
                job, in .cache/envs (shared by every test workspace through WORKBENCH_ENGINES_DIR)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from backend.core import defaults
from backend.runtime import engines
from backend.workspace import models

TEST_ENGINES = ["opencompass", "lagent"]
TEST_ENGINES_DIR = defaults.ROOT / ".cache" / "envs"


def bundled() -> int:
    try:
        path = models.ensure_bundled(defaults.home())     # the launcher: the operator's workspace
    except models.ModelError as e:      # no network, a bad WORKBENCH_SMOLLM2_GGUF...: a sentence, not a traceback
        print(f"bundled model: {e}", file=sys.stderr)
        return 1
    print(f"bundled model ready: {path}")
    return 0


def test_engines() -> int:
    """Install missing test engines through the product's own path: submit + a burst worker."""
    os.environ["WORKBENCH_ENGINES_DIR"] = str(TEST_ENGINES_DIR)
    env = dict(os.environ)
    missing = [e for e in TEST_ENGINES if e in engines.ENGINES and not engines.installed(e, defaults.home())]
    if not missing:
        return 0
    with tempfile.TemporaryDirectory() as home:
        env["WORKBENCH_HOME"] = home
        for engine in missing:
            print(f"installing the {engine} engine into {TEST_ENGINES_DIR} (once)", flush=True)
            spec = Path(home) / f"{engine}.yaml"
            spec.write_text(f"engine: {engine}\nreinstall: true\n")
            subprocess.run([sys.executable, "-m", "backend", "submit", "engine_install", str(spec)],
                           env=env, check=True, cwd=defaults.ROOT, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], env=env, cwd=defaults.ROOT, check=True)
        failed = [e for e in missing if not engines.installed(e, home=home)]
        for job_log in sorted(Path(home, "jobs").glob("*/run.log")):
            if failed:
                print(job_log.read_text(errors="replace")[-4000:])
    if failed:
        print(f"engine install failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    steps = {"bundled": bundled, "test-engines": test_engines}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        print(__doc__)
        sys.exit(2)
    sys.exit(steps[sys.argv[1]]())
