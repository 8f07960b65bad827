"""The job protocol: what a job process reads and writes in its folder.

A job runs as ``<engine python> -m jobs.<kind> <job_dir>/spec.json``. At top level it imports only the
standard library, pydantic, this module and light backend modules (its spec in ``backend/kinds``,
errors, paths, the store); heavy imports (torch, transformers) go inside ``main``, so that engine
environments need nothing else. The backend never imports a job module.

Files in the job folder:
  spec.json     the validated spec (written by the backend)
  run.log       stdout + stderr of the process (the worker redirects them)
  events.jsonl  one JSON object a line: {"t": time, "type": "progress"|"metric"|"message"|..., ...}
  result.json   written once at the end: {"ok": bool, ...} or {"ok": false, "error": {...}}
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from backend.access import ownership
from backend.core.errors import (BAD_INPUT, CANCELLED, CRASH, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, UserError,
                            classify_exception)
from backend.core.paths import PRIVATE_UMASK, atomic_write
from backend.core.registry import Entry, RegistryType
from backend.core.store import open_store


class JobError(Exception):
    """A failure the job understands: reported with its class and a human message. The message and the
    suggestion may be UserErrors (a key and fields in backend/core/i18n.py): result.json then also carries the
    keys, so the job page says them in the reader's language (backend.core.errors.job_message)."""

    def __init__(self, message: str | UserError, error_class: str = CRASH, suggestion: str | UserError = ""):
        super().__init__(str(message))
        self.error_class = error_class
        self.suggestion = str(suggestion)
        self.keyed = {name: {"key": v.key, "fields": {k: f if isinstance(f, (str, int, float, bool, type(None))) else str(f)
                                                      for k, f in v.fields.items()}}
                      for name, v in (("message_key", message), ("suggestion_key", suggestion)) if isinstance(v, UserError)}


class Cancelled(BaseException):
    """Raised in the job's main thread on SIGTERM so it can save and exit."""


class Job:
    """Handle given to a job's ``main``: its folder, id and owner (from its store row) and the event stream."""

    def __init__(self, job_dir: str | Path):
        self.dir = Path(job_dir)
        self.home = Path(os.environ.get("WORKBENCH_HOME", self.dir.parent.parent))
        self.id = int(self.dir.name) if self.dir.name.isdigit() else None      # the worker names the folder
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")
        self._progress_t = 0.0

    @functools.cached_property
    def owner(self) -> str:
        """Whose job this is (its row in the store): what it produces is theirs."""
        row = open_store(self.home).job(self.id) if self.id else None
        if row is None:
            raise JobError(f"job {self.id or self.dir} has no row in the store: nobody to own what it makes")
        return row.owner

    def check_name(self, type: RegistryType | str, name: str) -> None:
        """Before writing files under ``name``: refuse a name another owner holds (their files stay)."""
        try:
            ownership.check_free(type, name, self.owner, self.home)
        except ownership.RegistryRefused as e:
            raise JobError(str(e), BAD_INPUT, "choose another name") from None

    def register(self, type: RegistryType | str, name: str, path: str | Path = "", meta: dict | None = None) -> Entry:
        """Record what this job produced as its owner's, linked to this job (ownership.register)."""
        try:
            return ownership.register(type, name, path, meta, owner=self.owner, job_id=self.id, home=self.home)
        except ownership.RegistryRefused as e:
            raise JobError(str(e), BAD_INPUT, "choose another name") from None

    def event(self, type: str, **data) -> None:
        data = {"t": round(time.time(), 3), "type": type, **data}
        self._events.write(json.dumps(data, ensure_ascii=False) + "\n")
        self._events.flush()

    def progress(self, done: float, total: float | None = None, unit: str = "", message: str = "",
                 force: bool = False) -> None:
        """Progress of the whole job; rate-limited to 5 events/s unless ``force``."""
        now = time.monotonic()
        if not force and now - self._progress_t < 0.2 and (total is None or done < total):
            return
        self._progress_t = now
        self.event("progress", done=done, total=total, unit=unit, message=message)

    def metric(self, step: int, **values: float) -> None:
        """A point on the job's charts (loss, lr, tokens/s ...), keyed by step."""
        self.event("metric", step=step, **values)

    def message(self, text: str, level: str = "info") -> None:
        print(text, flush=True)
        self.event("message", level=level, text=text)

    def write_result(self, data: dict) -> None:
        atomic_write(self.dir / "result.json", json.dumps(data, ensure_ascii=False, indent=2))


def _on_sigterm(signum, frame):
    raise Cancelled()


def run(main: Callable, spec_model) -> None:
    """Entry point of every job module: ``if __name__ == "__main__": run(main, Spec)``.

    Validates the spec, calls ``main(spec, job)`` (which returns a dict for result.json), and
    turns the outcome into result.json and an exit code.
    """
    os.umask(PRIVATE_UMASK)                  # also on a cluster node, where the worker's umask does not reach
    spec_path = Path(sys.argv[1])
    job = Job(spec_path.parent)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        spec = spec_model.model_validate_json(spec_path.read_text(encoding="utf-8"))
        result = main(spec, job) or {}
        job.write_result({"ok": True, **result})
        job.event("done")
        code = EXIT_OK
    except Cancelled:
        job.write_result({"ok": False, "error": {"class": CANCELLED, "message": "cancelled"}})
        print("job cancelled", flush=True)
        code = EXIT_CANCELLED
    except (JobError, UserError) as e:          # a UserError is a refusal the backend put in a sentence
        if isinstance(e, UserError):
            e = JobError(str(e), BAD_INPUT)
        job.write_result({"ok": False, "error": {"class": e.error_class, "message": str(e),
                                                 "suggestion": e.suggestion, **e.keyed}})
        print(f"error [{e.error_class}]: {e}", file=sys.stderr, flush=True)
        code = EXIT_ERROR
    except BaseException as e:  # noqa: BLE001 - everything else is a crash, with its traceback
        traceback.print_exc()
        job.write_result({"ok": False, "error": {"class": classify_exception(e), "message": f"{type(e).__name__}: {e}"}})
        code = EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
