"""How jobs fail: the error classes, the one out-of-memory pattern, and classifying a failed job
from what it reported in result.json, else from its exit and log.

Jobs import the classes from here (``jobs/common.py``), the worker and the pages read them: one list.

``UserError`` is the base of every refusal meant for a person: it carries a message key of
backend/core/i18n.py and its fields. ``str(e)`` is the English sentence (CLI, logs, job results);
``e.text(lang)`` is the same sentence in the user's language (pages: ``ui.error(e)``).
"""
from __future__ import annotations

import errno
import re

from backend.core import i18n


class UserError(ValueError):
    """A refusal the user can read and fix: ``UserError("err.queue.not_queued", job=3, state="running")``.
    A field may itself be a UserError (or a list of them): it is rendered in the same language."""

    def __init__(self, key: str, /, **fields):
        self.key, self.fields = key, fields
        super().__init__(key)

    def text(self, lang: str = "en") -> str:
        return i18n.t(self.key, lang, **{k: _render(v, lang) for k, v in self.fields.items()})

    def __str__(self) -> str:
        return self.text("en")

    def __reduce__(self):                      # pickles with its fields (the default would pass only args)
        return _rebuild, (type(self), self.key, self.fields, self.__dict__)

    @classmethod
    def of(cls, e: BaseException, key: str = "err.plain", **fields):
        """``e`` as this class: the same key and fields when it is a UserError, else ``key`` with its text."""
        if isinstance(e, UserError):
            return e if isinstance(e, cls) else cls(e.key, **e.fields)
        return cls(key, **fields, text=str(e))


def _render(value, lang: str):
    if isinstance(value, UserError):
        return value.text(lang)
    if isinstance(value, (list, tuple)) and any(isinstance(v, UserError) for v in value):
        return ("；" if lang == "zh" else "; ").join(str(_render(v, lang)) for v in value)
    return value


def _rebuild(cls, key, fields, state):
    e = UserError.__new__(cls)
    UserError.__init__(e, key, **fields)
    e.__dict__.update(state)
    return e


def text(e: BaseException, lang: str = "en") -> str:
    """What to show for any exception: a UserError in ``lang``, anything else as it says itself."""
    return e.text(lang) if isinstance(e, UserError) else str(e)

# Error classes a job (or the worker) may report. The UI maps each to a suggestion.
BAD_INPUT = "bad_input"
OUT_OF_MEMORY = "out_of_memory"
MISSING_ENGINE = "missing_engine"
DOWNLOAD = "download_error"
CRASH = "crash"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
LOST = "lost"
KILLED = "killed"              # SIGKILL from outside, not the out-of-memory killer as far as the kernel says
DISK_FULL = "disk_full"        # ENOSPC while writing (a download, a checkpoint)

# How a job process exits (jobs/common.run): the worker reads these.
EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 143

# Running out of memory, as CUDA (OutOfMemoryError, "out of memory") and torch's CPU allocator ("can't
# allocate memory", ENOMEM's "Cannot allocate memory") say it, in an exception or a log.
OOM_TEXT = re.compile(r"out of memory|OutOfMemoryError|can't allocate memory|cannot allocate memory|MemoryError",
                      re.I)

PATTERNS = [
    (DISK_FULL, re.compile(r"No space left on device|Disk quota exceeded|ENOSPC", re.I)),
    (OUT_OF_MEMORY, OOM_TEXT),
    (MISSING_ENGINE, re.compile(r"ModuleNotFoundError|No module named|command not found", re.I)),
    (DOWNLOAD, re.compile(r"ConnectionError|HTTPError|Max retries exceeded|Read timed out|404 Client Error", re.I)),
]

# i18n keys of the suggestion shown beside each class (backend/core/i18n.py)
SUGGESTIONS = {
    OUT_OF_MEMORY: "err.oom",
    BAD_INPUT: "err.bad_input",
    MISSING_ENGINE: "err.missing_engine",
    DOWNLOAD: "err.download",
    CRASH: "err.crash",
    TIMEOUT: "err.timeout",
    CANCELLED: "err.cancelled",
    LOST: "err.lost",
    KILLED: "err.killed",
    DISK_FULL: "err.disk_full",
}


def is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or bool(OOM_TEXT.search(f"{type(e).__name__}: {e}"))


def classify_exception(e: BaseException) -> str:
    """The class of an exception a job did not understand."""
    if is_oom(e):
        return OUT_OF_MEMORY
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in str(e):
        return DISK_FULL
    if isinstance(e, (ValueError, FileNotFoundError)) and not isinstance(e, UnicodeError):
        return BAD_INPUT
    if isinstance(e, ModuleNotFoundError):
        return MISSING_ENGINE
    return CRASH


def classify(exit_code: int | None, result: dict | None, log_tail: str, oom: bool | None = None) -> tuple[str, str]:
    """(error class, message) of a job that did not succeed. ``oom``: whether the kernel says its
    out-of-memory killer ended the process (None: it does not say), for a SIGKILL or an unknown exit."""
    if result and not result.get("ok") and isinstance(result.get("error"), dict):
        err = result["error"]
        return err.get("class") or CRASH, err.get("message") or ""
    if oom and exit_code in (-9, None):
        return OUT_OF_MEMORY, "the kernel's out-of-memory killer ended the process"
    if exit_code == -9:
        return KILLED, "the process was killed (SIGKILL) by something outside the workbench" + (
            "; the kernel reports no out-of-memory kill" if oom is False else
            "; the kernel here does not say whether it was the out-of-memory killer")
    for cls, pattern in PATTERNS:
        m = pattern.search(log_tail)
        if m:
            line = next((l for l in reversed(log_tail.splitlines()) if pattern.search(l)), m.group(0))
            return cls, line.strip()
    last = next((l for l in reversed(log_tail.splitlines()) if l.strip()), "")
    if exit_code is None:
        return CRASH, "the process ended without writing its result" + (f": {last.strip()}" if last else "")
    return CRASH, f"exited with code {exit_code}" + (f": {last.strip()}" if last else "")


def _job_text(result: dict | None, name: str, lang: str) -> str:
    err = (result or {}).get("error")
    if not isinstance(err, dict):
        return ""
    keyed = err.get(f"{name}_key")
    if isinstance(keyed, dict) and keyed.get("key") in i18n.STRINGS:
        return UserError(keyed["key"], **(keyed.get("fields") or {})).text(lang)
    return err.get(name) or ""


def job_suggestion(result: dict | None, lang: str = "en") -> str:
    """What the job itself suggested for its failure (e.g. the spec changes that fit memory), or "";
    in ``lang`` when the job gave it as a key (jobs.common.JobError with a UserError)."""
    return _job_text(result, "suggestion", lang)


def job_message(result: dict | None, lang: str) -> str:
    """The job's own failure message in ``lang`` when it gave a key, else as it wrote it, or ""."""
    return _job_text(result, "message", lang)
