"""Classifying a failed job: from what it reported in result.json, else from its exit and log."""
from __future__ import annotations

import re

from jobs.common import (BAD_INPUT, CANCELLED, CRASH, DOWNLOAD, MISSING_ENGINE, OUT_OF_MEMORY,
                         TIMEOUT)

PATTERNS = [
    (OUT_OF_MEMORY, re.compile(r"CUDA out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError", re.I)),
    (MISSING_ENGINE, re.compile(r"ModuleNotFoundError|No module named|command not found", re.I)),
    (DOWNLOAD, re.compile(r"ConnectionError|HTTPError|Max retries exceeded|Read timed out|404 Client Error", re.I)),
]

# i18n keys of the suggestion shown beside each class (backend/i18n.py)
SUGGESTIONS = {
    OUT_OF_MEMORY: "err.oom",
    BAD_INPUT: "err.bad_input",
    MISSING_ENGINE: "err.missing_engine",
    DOWNLOAD: "err.download",
    CRASH: "err.crash",
    TIMEOUT: "err.timeout",
    CANCELLED: "err.cancelled",
    "lost": "err.lost",
}


def classify(exit_code: int | None, result: dict | None, log_tail: str) -> tuple[str, str]:
    """(error class, message) of a job that did not succeed."""
    if result and not result.get("ok") and isinstance(result.get("error"), dict):
        err = result["error"]
        return err.get("class") or CRASH, err.get("message") or ""
    if exit_code is not None and exit_code < 0 and exit_code == -9:
        return OUT_OF_MEMORY, "the process was killed (SIGKILL), most often by the out-of-memory killer"
    for cls, pattern in PATTERNS:
        m = pattern.search(log_tail)
        if m:
            line = next((l for l in reversed(log_tail.splitlines()) if pattern.search(l)), m.group(0))
            return cls, line.strip()
    last = next((l for l in reversed(log_tail.splitlines()) if l.strip()), "")
    return CRASH, f"exited with code {exit_code}" + (f": {last.strip()}" if last else "")


def job_suggestion(result: dict | None) -> str:
    """What the job itself suggested for its failure (e.g. the spec changes that fit memory), or ""."""
    err = (result or {}).get("error")
    return (err.get("suggestion") or "") if isinstance(err, dict) else ""
