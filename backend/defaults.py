"""Every default in one place. Each can be overridden by the environment variable named beside it."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent          # the repository: jobs/ is importable from here


def env(name: str, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return type(default)(value) if not isinstance(default, Path) else Path(value)


def home() -> Path:
    """The workspace folder (WORKBENCH_HOME): database, jobs, models, datasets, engines."""
    return env("WORKBENCH_HOME", ROOT / "workspace").resolve()


ADDRESS = "127.0.0.1"            # WORKBENCH_ADDRESS
PORT = 6006                      # WORKBENCH_PORT
BASE_URL_PATH = ""               # WORKBENCH_BASE_URL_PATH
CPU_SLOTS = 1                    # WORKBENCH_CPU_SLOTS: heavy jobs at once when there is no GPU
USER_MAX_RUNNING = 0             # WORKBENCH_USER_MAX_RUNNING: 0 means no per-user cap
POLL_S = 0.5                     # WORKBENCH_POLL_S: worker loop period
HEARTBEAT_S = 2.0                # worker and job heartbeat period
LOST_AFTER_S = 30.0              # WORKBENCH_LOST_AFTER_S: a running job whose heartbeat is older is lost
CANCEL_GRACE_S = 10.0            # WORKBENCH_CANCEL_GRACE_S: SIGTERM, then SIGKILL after this
JOB_TIMEOUT_S = 0                # WORKBENCH_JOB_TIMEOUT_S: default timeout for jobs that give none; 0 = none
LOG_TAIL_BYTES = 64 * 1024       # how much of a log a page reads at once
UPLOAD_MAX_MB = 1024             # WORKBENCH_UPLOAD_MAX_MB
MODELS_QUOTA_GB = 0.0            # WORKBENCH_MODELS_QUOTA_GB: most that models/ may hold; 0 = the disk's free space
DATASET_MAX_LINE_MB = 16         # WORKBENCH_DATASET_MAX_LINE_MB: a dataset line longer than this is reported, not parsed
DATASET_PAGE_ROWS = 50           # rows in one page of the Datasets table
USER = "local"                   # WORKBENCH_USER: owner of jobs submitted from this shell/browser
INSTRUCTORS = ""                 # WORKBENCH_INSTRUCTORS: comma-separated names that may stop anybody's job
DB_BUSY_TIMEOUT_MS = 10_000


def setting(name: str):
    """A setting by its constant name, read from WORKBENCH_<NAME> when set."""
    return env("WORKBENCH_" + name, globals()[name])


# Settings documented in README (tests/test_docs.py checks each one appears there).
SETTINGS = ["HOME", "ADDRESS", "PORT", "BASE_URL_PATH", "CPU_SLOTS", "USER_MAX_RUNNING", "POLL_S",
            "LOST_AFTER_S", "CANCEL_GRACE_S", "JOB_TIMEOUT_S", "UPLOAD_MAX_MB", "USER", "INSTRUCTORS", "LANG",
            "SSH_PORT", "ENGINES_DIR"]
