"""engine_install: create an engine's virtual environment and install its packages, with live pip output."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv


from backend.runtime import engines
from backend.core.errors import MISSING_ENGINE
from backend.kinds.engine_install import Spec
from jobs.common import Job, JobError, run


def pip(job: Job, python, args: list[str], step: int, steps: int) -> None:
    cmd = [str(python), "-m", "pip", "install", "--progress-bar", "off", *args]
    job.progress(step, steps, "steps", " ".join(args)[:200], force=True)
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
            job.progress(step, steps, "steps", line.strip()[:200])
    if proc.wait() != 0:
        raise JobError(f"pip install failed (exit {proc.returncode}); see the log", MISSING_ENGINE,
                       "check the package versions and that the package index is reachable")


def main(spec: Spec, job: Job) -> dict:
    info = engines.ENGINES[spec.engine]
    target = engines.env_dir(spec.engine, job.home)
    if spec.reinstall and target.exists():
        shutil.rmtree(target)
    (target / ".installed").unlink(missing_ok=True)
    steps = 3 + bool(info.get("no_deps"))
    job.progress(0, steps, "steps", f"creating {target}", force=True)
    print(f"creating virtual environment {target}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=False).create(target)
    python = target / "bin" / "python"
    pip(job, python, ["--upgrade", "pip"], 1, steps)
    held = [] if spec.extra_requirements else engines.lock(spec.engine)    # extra packages: the user moves off the lock
    pip(job, python, [*held, *info["requirements"], *spec.extra_requirements], 2, steps)
    if info.get("no_deps"):
        pip(job, python, ["--no-deps", *held, *info["no_deps"]], 3, steps)
    (target / ".installed").write_text("\n".join(engines.requirements(spec.engine) + spec.extra_requirements) + "\n")
    job.progress(steps, steps, "steps", "installed", force=True)
    return {"engine": spec.engine, "python": str(python)}


if __name__ == "__main__":
    run(main, Spec)
