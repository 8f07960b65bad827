"""The workspace is its user's only: the launcher, the CLI, the worker, the app and every job run with umask
077, the workspace folder is 0700 and its database 0600 (also one made before), and each job's folder and
files (spec, log, events, result) are 0600/0700, made by the real CLI, worker and job processes."""
from __future__ import annotations

import stat

from tests.conftest import cli, run_burst


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_workspace_and_job_files_are_private(home, tmp_path):
    home.chmod(0o755)                                     # a workspace made before, with umask 022
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 2\ninterval_s: 0.01\n")
    submitted = cli(home, "submit", "sleepy", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split()[-1]
    assert run_burst(home).returncode == 0
    job = home / "jobs" / job_id
    assert mode(home) == 0o700 and mode(home / "workbench.db") == 0o600
    assert all(mode(p) == 0o600 for p in home.glob("workbench.db-*"))
    assert mode(job) == 0o700 and mode(job / "artifacts") == 0o700
    made = {p.name: mode(p) for p in job.iterdir() if p.is_file()}
    assert {"spec.json", "run.log", "events.jsonl", "result.json"} <= set(made) and set(made.values()) == {0o600}, made
