"""Submitting, cancelling, retrying and cloning jobs: what pages and the CLI call."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from backend import defaults, job_env, kinds, remote_code
from backend.paths import job_dir, queue_wake_file
from backend.states import JobState
from backend.store import open_store


class SubmitError(ValueError):
    """A spec that can't be queued; the message is meant for the user."""


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate(kind: str, spec: dict):
    """Return (Kind, validated spec model), or raise SubmitError with a readable reason."""
    try:
        k = kinds.get(kind)
    except kinds.UnknownKind as e:
        raise SubmitError(str(e)) from None
    if not isinstance(spec, dict):
        raise SubmitError("the spec must be a mapping of fields to values")
    try:
        model = kinds.specs(k).Spec.model_validate(spec)
    except ValidationError as e:
        raise SubmitError(f"invalid {kind} spec: {format_validation_error(e)}") from None
    except ValueError as e:
        raise SubmitError(f"invalid {kind} spec: {e}") from None
    return k, model


def submit(kind: str, spec: dict, owner: str | None = None, priority: int = 0, label: str = "",
           parent_id: int | None = None, secrets: dict[str, str] | None = None,
           home: Path | None = None) -> int:
    """Validate and queue a job. ``secrets`` (tokens, API keys) reach the job as environment
    variables through a private file (backend/job_env.py) written before the job can be claimed and
    deleted at launch or whenever the job ends otherwise: never the spec, DB or log."""
    k, model = validate(kind, spec)
    owner = owner or defaults.setting("USER")
    why = remote_code.refusal(model.model_dump(mode="json"), home) or resume_refusal(model, owner, home)
    if why:
        raise SubmitError(why)
    try:
        asked = kinds.asked(k, model)
    except ValueError as e:
        raise SubmitError(str(e)) from None
    written: list[Path] = []

    def write_secrets(job_id: int) -> None:        # before the row is committed: no worker can claim it yet
        written.append(job_env.write_secrets(job_dir(job_id, home), secrets))
    try:
        job_id = open_store(home).insert_job(kind, owner, model.model_dump(mode="json"),
                                             asked, priority=priority, label=label, parent_id=parent_id,
                                             prepare=write_secrets if secrets else None)
    except BaseException:
        for path in written:                        # the row was rolled back: its id may be given again
            path.unlink(missing_ok=True)
        raise
    wake = queue_wake_file(home)
    wake.parent.mkdir(parents=True, exist_ok=True)
    wake.touch()
    return job_id


def resume_refusal(spec, owner: str, home: Path | None) -> str:
    """A job resumes only from its owner's own jobs (checkpoints hold their data and weights)."""
    rf = getattr(spec, "resume_from", None)
    old = open_store(home).job(rf) if isinstance(rf, int) else None
    if old is not None and old["owner"] != owner:
        return f"resume_from: job {rf} belongs to {old['owner']}: resume only from your own jobs"
    return ""


def get(job_id: int, home: Path | None = None) -> dict:
    job = open_store(home).job(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    return job


def list_jobs(states=None, kind: str | None = None, owner: str | None = None, limit: int = 500,
              home: Path | None = None) -> list[dict]:
    return open_store(home).jobs(states=states, kind=kind, owner=owner, limit=limit)


def counts(home: Path | None = None) -> dict[str, int]:
    """Jobs per state."""
    return open_store(home).counts()


def live_workers(home: Path | None = None) -> list[dict]:
    """Workers whose heartbeat is recent (WORKBENCH_LOST_AFTER_S): the one rule for "a worker is alive"."""
    return [w for w in open_store(home).workers() if worker_fresh(w)]


def worker_fresh(worker: dict) -> bool:
    return time.time() - worker["heartbeat_at"] < defaults.setting("LOST_AFTER_S")


def instructors() -> set[str]:
    """The names in WORKBENCH_INSTRUCTORS: they may stop anybody's job."""
    return {n.strip() for n in defaults.setting("INSTRUCTORS").split(",") if n.strip()}


def may_manage(job: dict, user: str | None) -> bool:
    """A job is stopped by its owner or an instructor; ``None`` is the operator's shell (the CLI).
    Names are declared, not authenticated: this keeps a class from stopping each other's jobs by mistake."""
    return user is None or user == job["owner"] or user in instructors()


def cancel(job_id: int, home: Path | None = None, by: str | None = None) -> dict:
    """Queued jobs end at once; running ones get SIGTERM, then SIGKILL after a grace period."""
    job = get(job_id, home)
    if not may_manage(job, by):
        raise SubmitError(f"job {job_id} belongs to {job['owner']}: only they or an instructor can stop it")
    job = open_store(home).request_cancel(job_id)
    if JobState(job["state"]).finished:               # ended while queued: its secrets are of no more use
        job_env.discard(job_dir(job_id, home))
    return job


def retry(job_id: int, owner: str | None = None, home: Path | None = None) -> int:
    """Queue the same spec again as a new job (the old one's record stays)."""
    job = get(job_id, home)
    if not JobState(job["state"]).finished:
        raise SubmitError(f"job {job_id} is still {job['state']}")
    return submit(job["kind"], job["spec"], owner=owner or job["owner"], priority=job["priority"],
                  label=job["label"], parent_id=job_id, home=home)


def clone(job_id: int, home: Path | None = None) -> tuple[str, dict]:
    """The kind and spec of a job, to edit and submit as a new one."""
    job = get(job_id, home)
    return job["kind"], dict(job["spec"])


def consider_order(queued: list[dict], active: list[dict]) -> list[dict]:
    """The order the worker considers queued jobs in: priority, then fair share (owners with fewer running
    jobs first), then age."""
    running = Counter(j["owner"] for j in active)
    return sorted(queued, key=lambda j: (-j["priority"], running[j["owner"]], j["id"]))


def place_in_queue(job_id: int, home: Path | None = None) -> int | None:
    """1 for the queued job the worker considers next, 2 for the one after...; None when not queued."""
    store = open_store(home)
    ids = [j["id"] for j in consider_order(store.queued(), store.active())]
    return ids.index(job_id) + 1 if job_id in ids else None


def run_next(job_id: int, by: str | None = None, home: Path | None = None) -> None:
    """An instructor (or the operator's shell) moves a queued job to the front: above every queued priority."""
    if by is not None and by not in instructors():
        raise SubmitError("only an instructor can move a job to the front of the queue")
    job = get(job_id, home)
    if job["state"] != JobState.QUEUED.value:
        raise SubmitError(f"job {job_id} is {job['state']}, not queued")
    store = open_store(home)
    top = max((j["priority"] for j in store.queued() if j["id"] != job_id), default=job["priority"] - 1)
    store.update_job(job_id, priority=max(job["priority"], top + 1))
