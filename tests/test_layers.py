"""The import rule, as a test: pages -> backend <- jobs (import-linter's contracts in .importlinter)."""
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_layer_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


def test_a_backend_module_importing_a_job_breaks_the_contract(tmp_path):
    """The contract is not a hope: a copy of the tree where one backend module imports a job (inside a
    function, where a loop would hide it) fails, and so does a page that opens the store, and a core module that
    reaches up into the runtime (the backend's own layers)."""
    for part in ("backend", "jobs", "pages", ".importlinter"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tmp_path / part)
    with open(tmp_path / "backend" / "runtime" / "logs.py", "a") as f:
        f.write("\n\ndef sneaky():\n    from jobs import common\n    return common\n")
    with open(tmp_path / "pages" / "jobs.py", "a") as f:
        f.write("\nfrom backend.core.store import open_store  # noqa: E402\n")
    with open(tmp_path / "backend" / "core" / "paths.py", "a") as f:
        f.write("\n\ndef upward():\n    from backend.runtime import queue\n    return queue\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "backend.runtime.logs -> jobs.common" in out.stdout and "pages.jobs -> backend.core.store" in out.stdout
    assert "backend.core.paths -> backend.runtime.queue" in out.stdout
