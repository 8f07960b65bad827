"""What a job process gets to see: an environment built from an allow-list, plus the job's own secrets.

The worker's environment holds the operator's settings and maybe their tokens (OPENAI_API_KEY,
HF_TOKEN, MODELSCOPE_API_TOKEN, OPENXLAB_AK/SK...). A job sees only the variables named here (paths,
locale, hub and CUDA settings, non-secret WORKBENCH_* settings) and the secrets submitted with it,
which travel in ``secrets.json`` in the job folder (mode 0600, written before the job row can be
claimed, deleted at launch or when the job ends any other way). Token caches a hub client might write
(huggingface_hub's token file, ModelScope's credentials) point into a private folder of the job that
the worker removes when the job ends, so neither the operator's stored login nor a student's token
is shared with another job.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

SECRETS_FILE = "secrets.json"
CREDENTIALS_DIR = ".credentials"        # per-job token caches; removed when the job ends

ALLOW = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP",
    "PYTHONPATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "COMPASS_DATA_CACHE", "DATASET_SOURCE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS",
    "PIP_NO_INDEX", "PIP_TRUSTED_HOST", "PIP_CACHE_DIR",
}
ALLOW_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "HF_", "HUGGINGFACE_",
                  "TRANSFORMERS_", "MODELSCOPE_", "OPENXLAB_", "WORKBENCH_")
# never passed on, whatever the prefix: names that hold a secret
DENY = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|(^|_)(API_?)?KEY(S)?($|_)|_AK$|_SK$", re.I)


def allowed(name: str) -> bool:
    return (name in ALLOW or name.startswith(ALLOW_PREFIXES)) and not DENY.search(name)


def environment(base: dict[str, str], job_dir: Path, secrets: dict[str, str], **settings: str) -> dict[str, str]:
    """The job's environment: the allowed part of ``base``, token caches inside the job's private
    credentials folder, then ``settings`` (the worker's own, like WORKBENCH_JOB_ID), then the secrets."""
    env = {k: v for k, v in base.items() if allowed(k)}
    creds = job_dir / CREDENTIALS_DIR
    creds.mkdir(mode=0o700, exist_ok=True)
    env.update(HF_TOKEN_PATH=str(creds / "hf-token"),
               MODELSCOPE_CREDENTIALS_PATH=str(creds / "modelscope"), **settings)
    env.update(secrets)
    return env


def write_secrets(job_dir: Path, secrets: dict[str, str]) -> Path:
    """Write ``secrets`` readable by this user only (created 0600, never wider for a moment)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / SECRETS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({str(k): str(v) for k, v in secrets.items()}, f)
    return path


class BadSecrets(ValueError):
    """The secrets file can't be read as a mapping of names to strings."""


def take_secrets(job_dir: Path) -> dict[str, str]:
    """Read and delete the job's secrets ({} when it has none); BadSecrets if the file is corrupt
    (the file is deleted either way)."""
    path = job_dir / SECRETS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise BadSecrets(f"its secrets file can't be read ({e})") from None
    finally:
        discard(job_dir)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise BadSecrets("its secrets file is not a mapping of names to text")
    return data


def discard(job_dir: Path) -> None:
    """Remove the job's secrets and any token cache it left (every way a job ends calls this)."""
    (job_dir / SECRETS_FILE).unlink(missing_ok=True)
    shutil.rmtree(job_dir / CREDENTIALS_DIR, ignore_errors=True)
