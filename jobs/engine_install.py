"""engine_install: create an engine's virtual environment and install its packages, with live pip output."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from jobs.common import MISSING_ENGINE, JobError, Job, run


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    extra_requirements: list[str] = []        # added to the engine's own list
    reinstall: bool = False

    @field_validator("engine")
    @classmethod
    def known(cls, v: str) -> str:
        from backend.engines import ENGINES
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; engines: {', '.join(sorted(ENGINES))}")
        return v

    @field_validator("extra_requirements")
    @classmethod
    def plain(cls, v: list[str]) -> list[str]:
        for req in v:
            if not req or req.startswith("-") or any(c in req for c in " ;|&`$"):
                raise ValueError(f"{req!r} is not a plain requirement (name and version only)")
        return v


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
    from backend import engines
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
    pip(job, python, [*info["requirements"], *spec.extra_requirements], 2, steps)
    if info.get("no_deps"):
        pip(job, python, ["--no-deps", *info["no_deps"]], 3, steps)
    (target / ".installed").write_text("\n".join(engines.requirements(spec.engine) + spec.extra_requirements) + "\n")
    job.progress(steps, steps, "steps", "installed", force=True)
    return {"engine": spec.engine, "python": str(python)}


if __name__ == "__main__":
    run(main, Spec)
