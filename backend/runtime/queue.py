"""Submitting, cancelling, retrying and cloning jobs: what pages and the CLI call."""
from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from backend.access import ownership, users
from backend.core import defaults, i18n
from backend.pipeline import rag
from backend.runtime import job_env
from backend.workspace import remote_code
from backend.kinds import catalog as kinds
from backend.core.errors import UserError
from backend.core.job import Job
from backend.core.paths import job_dir, queue_wake_file
from backend.core.states import JobState
from backend.core.store import CorruptStore, open_store


class SubmitError(UserError):
    """A spec that can't be queued; the message (a key and fields) is meant for the user."""


class Refused(SubmitError, users.Refused):
    """What the acting user may not do with a job (recorded in the audit log)."""


def validation_errors(e: ValidationError) -> list[UserError]:
    """One keyed error per field pydantic refused: a validator's own UserError in the user's language,
    else pydantic's message (English)."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        cause = (err.get("ctx") or {}).get("error")
        parts.append(UserError("err.queue.field", where=where, msg=cause if isinstance(cause, UserError) else err["msg"]))
    return parts


def validate(kind: str, spec: dict):
    """Return (Kind, validated spec model), or raise SubmitError with a readable reason."""
    try:
        k = kinds.get(kind)
    except kinds.UnknownKind as e:
        raise SubmitError.of(e) from None
    if not isinstance(spec, dict):
        raise SubmitError("err.queue.not_mapping")
    try:
        model = kinds.module(k).Spec.model_validate(spec)
    except ValidationError as e:
        raise SubmitError("err.queue.invalid_spec", kind=kind, detail=validation_errors(e)) from None
    except ValueError as e:
        raise SubmitError("err.queue.invalid_spec", kind=kind, detail=UserError.of(e)) from None
    return k, model


def submit(kind: str, spec: dict, owner: str, priority: int = 0, label: str = "",
           parent_id: int | None = None, secrets: dict[str, str] | None = None, *, home: Path) -> int:
    """Validate and queue a job. ``secrets`` (tokens, API keys) reach the job as environment
    variables through a private file (backend/runtime/job_env.py) written before the job can be claimed and
    deleted at launch or whenever the job ends otherwise: never the spec, DB or log."""
    if not owner or not isinstance(owner, str):
        raise TypeError(f"a job needs its owner's name, not {owner!r}")
    k, model = validate(kind, spec)
    why = remote_code.refusal(model.model_dump(mode="json"), home) or resume_refusal(model, owner, home)
    if why:
        raise SubmitError.of(why)
    check_uses(k, model, owner, home)
    if getattr(model, "kb", ""):            # a knowledge base that exists (check_uses asked the use rule)
        try:
            rag.check_kb(model.kb, owner, home, Refused)
        except rag.RagError as e:
            raise SubmitError.of(e) from None
    try:
        asked = kinds.asked(k, model, home, owner)
    except ValueError as e:
        raise SubmitError.of(e) from None
    check_quota(owner, asked, home)
    users.check_disk(owner, 0, Refused, home)      # what a job will write is known only once written: refused when full
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
    users.audit(owner, "submit", job_id, detail=kind, home=home)
    wake = queue_wake_file(home)
    wake.parent.mkdir(parents=True, exist_ok=True)
    wake.touch()
    return job_id


def resume_refusal(spec, owner: str, home: Path | None) -> UserError | None:
    """A job resumes only from its owner's own jobs (checkpoints hold their data and weights)."""
    rf = getattr(spec, "resume_from", None)
    old = open_store(home).job(rf) if isinstance(rf, int) else None
    if old is not None and old.owner != owner:
        return UserError("err.queue.resume_not_yours", job=rf, owner=old.owner)
    return None


def check_uses(kind, spec, owner: str, home: Path) -> None:
    """A job uses only what its owner may use (users.may_use): their own, shared ones, the class's and the
    instructors'; another student's private model, adapter, endpoint, dataset or job folder is refused (audited),
    whether the spec names it or gives its path or URL (ownership.uses), or its kind declares it (the spec
    module's ``uses(spec) -> [(type, name)]``, e.g. push's source)."""
    things = ownership.uses(spec.model_dump(mode="json"), home)
    mod = kinds.module(kind)
    for type_, name in mod.uses(spec) if hasattr(mod, "uses") else []:
        things += [e for e in [open_store(home).get(type_, name)] if e is not None]
    for thing in things:
        ownership.check_use(thing, owner, "submit", Refused, home=home)


def workspace_problem(home: Path, lang: str = "en") -> str | None:
    """One sentence when the workspace's database cannot be opened (corrupt, unreadable), else None."""
    try:
        open_store(home)
    except CorruptStore as e:
        return i18n.t("store.corrupt", lang, path=e.path, error=e.error)
    return None


def parse_job_id(text) -> int | None:
    """A job id typed or linked (``?job=``): ASCII digits only ('²'.isdigit() is true), else None."""
    m = re.fullmatch(r"\s*([0-9]{1,20})\s*", str(text or ""))
    return int(m.group(1)) if m else None


def check_quota(owner: str, asked: dict, home: Path) -> None:
    """Refuse a submit past the owner's caps (their account's override, else the class default): jobs waiting,
    and for a job that needs a GPU or a CPU slot, GPU-hours used today (instructors have no GPU-hours cap)."""
    row = open_store(home).user(owner) if users.mode() != "none" else None

    def cap(column: str, setting: str):
        return row[column] if row and row[column] is not None else defaults.setting(setting)
    if most := cap("max_queued", "USER_MAX_QUEUED"):
        queued = len(open_store(home).jobs(states=[JobState.QUEUED], owner=owner, limit=most + 1))
        if queued >= most:
            users.refuse(owner, "submit", owner, Refused("err.queue.quota", queued=queued, cap=most), home=home)
    most = gpu_hours_cap(owner, home)
    if most and heavy(asked):
        used = gpu_hours_today(home).get(owner, 0.0)
        if used >= most:
            users.refuse(owner, "submit", owner, Refused("err.queue.gpu_quota", used=f"{used:.2f}", cap=f"{most:g}"), home=home)
        waiting = [j for j in open_store(home).queued() if j.owner == owner and heavy(j.asked)]
        ahead = sum(estimated_gpu_hours(j.asked) for j in waiting)
        if used + ahead >= most:
            users.refuse(owner, "submit", owner, Refused("err.queue.gpu_quota_queued", used=f"{used:.2f}",
                                                         cap=f"{most:g}", n=len(waiting), queued=f"{ahead:.2f}"), home=home)


def heavy(asked: dict) -> bool:
    """A job that holds a GPU or a CPU slot (what GPU-hours count); the others are light jobs."""
    return bool(asked.get("gpus") or asked.get("cpu_slots"))


def estimated_gpu_hours(asked: dict) -> float:
    """What a waiting job is counted as against GPU-hours before it ran: its GPUs (or CPU slots) times its
    timeout, at most defaults.QUEUED_JOB_ESTIMATE_H."""
    hours = min(filter(None, [(asked.get("timeout_s") or 0) / 3600, defaults.QUEUED_JOB_ESTIMATE_H]))
    return (int(asked.get("gpus") or 0) or int(asked.get("cpu_slots") or 0)) * hours


def gpu_hours_cap(owner: str, home: Path) -> float:
    """``owner``'s GPU-hours a day: their account's override, else the class default (0: none; instructors: none)."""
    if users.is_instructor(owner, home=home):
        return 0.0
    row = open_store(home).user(owner) if users.mode() != "none" else None
    return row["max_gpu_hours"] if row and row["max_gpu_hours"] is not None else defaults.setting("USER_GPU_HOURS_PER_DAY")


def over_gpu_hours(owners: set[str], home: Path) -> set[str]:
    """Those of ``owners`` whose GPU-hours today reached their cap: the worker starts no heavy job of theirs."""
    caps = {o: gpu_hours_cap(o, home) for o in owners}
    used = gpu_hours_today(home) if any(caps.values()) else {}
    return {o for o, most in caps.items() if most and used.get(o, 0.0) >= most}


def midnight(now: float) -> float:
    """The local midnight that starts the day of ``now`` (the time zone's, DST included)."""
    return time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))


def gpu_hours_today(home: Path, now: float | None = None) -> dict[str, float]:
    """GPU-hours each owner's jobs used from local midnight to ``now`` (default: the clock; running ones up to
    ``now``): hours times the share of a GPU's memory held, so a job holding a whole GPU for an hour costs 1; on a
    machine without GPUs, CPU-slot hours (resources.place records each job's weight). A job that ran across
    midnight counts only its part after it."""
    now = time.time() if now is None else now
    return {o: s / 3600 for o, s in open_store(home).usage_since(midnight(now), weighted=True, now=now).items()}


def get(job_id: int, home: Path, by: users.Actor) -> Job:
    """A job; with ``by``, only one that user may see (a student: their own, with accounts)."""
    job = open_store(home).job(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if not users.may_see(job.owner, by, home=home):
        users.refuse(by, "see", f"job {job_id}", Refused("err.queue.not_visible", job=job_id), home=home)
    return job


def list_jobs(states=None, kind: str | None = None, owner: str | None = None, limit: int = 500, *, home: Path,
              by: users.Actor) -> list[Job]:
    jobs = open_store(home).jobs(states=states, kind=kind, owner=owner, limit=limit)
    return [j for j in jobs if users.may_see(j.owner, by, home=home)]


def jobs_page(page: int = 1, per_page: int = 50, states=None, kind: str | None = None, owner: str | None = None, *,
              home: Path, by: users.Actor) -> tuple[list, int]:
    """One page of the jobs ``by`` may see (newest first) that pass the filters, and how many pass them:
    paged and filtered in SQL, so a store of many thousands of jobs costs what one page costs."""
    user = users.acting(by, home=home)
    owners = None if users.mode() == "none" or user.instructor else [user.name, ""]  # may_see
    store = open_store(home)
    total = store.count_jobs(states=states, kind=kind, owner=owner, owners=owners)
    page = min(max(1, page), max(1, -(-total // per_page)))
    return store.jobs(states=states, kind=kind, owner=owner, owners=owners, limit=per_page,
                      offset=(page - 1) * per_page), total


def counts(home: Path) -> dict[str, int]:
    """Jobs per state."""
    return open_store(home).counts()


def live_workers(home: Path) -> list[dict]:
    """Workers whose heartbeat is recent (WORKBENCH_LOST_AFTER_S): the one rule for "a worker is alive"."""
    return [w for w in open_store(home).workers() if worker_fresh(w)]


def worker_fresh(worker: dict) -> bool:
    return time.time() - worker["heartbeat_at"] < defaults.setting("LOST_AFTER_S")


def instructors() -> set[str]:
    """The names in WORKBENCH_INSTRUCTORS: they may stop anybody's job (when there are no accounts)."""
    return users.declared_instructors()


def may_manage(job: Job, user: users.Actor, home: Path) -> bool:
    """A job is stopped by its owner or an instructor (or the operator's shell, the CLI).
    Without accounts, names are declared, not authenticated (see backend/access/users.py)."""
    return users.may_manage(job.owner, user, home)


NOT_YOURS = {"stop": "err.queue.not_yours_stop", "retry": "err.queue.not_yours_retry"}


def _manage(job: Job, by: users.Actor, action: str, home: Path) -> None:
    if not may_manage(job, by, home):
        users.refuse(by, action, f"job {job.id}", Refused(NOT_YOURS[action], job=job.id, owner=job.owner), home)


def cancel(job_id: int, home: Path, by: users.Actor) -> Job:
    """Queued jobs end at once; running ones get SIGTERM, then SIGKILL after a grace period."""
    job = get(job_id, home, by=users.OPERATOR)        # the row; may_manage decides (audited)
    _manage(job, by, "stop", home)
    users.audit(users.actor(by, home=home), "cancel", f"job {job_id}", home=home)
    job = open_store(home).request_cancel(job_id)
    if job.finished:                                # ended while queued: its secrets are of no more use
        job_env.discard(job_dir(job_id, home))
    return job


def retry(job_id: int, owner: str | None = None, secrets: dict[str, str] | None = None, *, home: Path,
          by: users.Actor) -> int:
    """Queue the same spec again as a new job (the old one's record stays). Secrets are never kept: a job that
    needs one (a push's token) is given it again."""
    job = get(job_id, home, by=users.OPERATOR)        # the row; may_manage decides (audited)
    _manage(job, by, "retry", home)
    if not job.finished:
        raise SubmitError("err.queue.still_active", job=job_id, state=job.state)
    return submit(job.kind, job.spec, owner=owner or job.owner, priority=job.priority,
                  label=job.label, parent_id=job_id, secrets=secrets, home=home)


def clone(job_id: int, home: Path, by: users.Actor) -> tuple[str, dict]:
    """The kind and spec of a job, to edit and submit as a new one."""
    job = get(job_id, home, by)
    return job.kind, dict(job.spec)


def consider_order(queued: list[Job], active: list[Job], usage: dict[str, float] | None = None) -> list[Job]:
    """The order the worker considers queued jobs in: priority, then fair share (owners with fewer running
    jobs first, then those whose jobs ran less in the last FAIR_SHARE_WINDOW_S), then age."""
    running = Counter(j.owner for j in active)
    usage = usage or {}
    return sorted(queued, key=lambda j: (-j.priority, running[j.owner], usage.get(j.owner, 0.0), j.id))


def recent_usage(home: Path) -> dict[str, float]:
    return open_store(home).usage_since(time.time() - defaults.FAIR_SHARE_WINDOW_S)


def running_caps(home: Path) -> dict[str, int]:
    """Per-account overrides of WORKBENCH_USER_MAX_RUNNING (0: no cap for that account)."""
    return {u["name"]: u["max_running"] for u in open_store(home).users() if u["max_running"] is not None}


def place_in_queue(job_id: int, home: Path) -> int | None:
    """1 for the queued job the worker considers next, 2 for the one after...; None when not queued."""
    store = open_store(home)
    ids = [j.id for j in consider_order(store.queued(), store.active(), recent_usage(home))]
    return ids.index(job_id) + 1 if job_id in ids else None


def run_next(job_id: int, by: users.Actor, home: Path) -> None:
    """An instructor (or the operator's shell) moves a queued job to the front: above every queued priority."""
    users.require_instructor(by, "run next", f"job {job_id}", Refused("err.queue.run_next_instructor"), home=home)
    job = get(job_id, home, by=users.OPERATOR)        # the row; may_manage decides (audited)
    if job.state != JobState.QUEUED.value:
        raise SubmitError("err.queue.not_queued", job=job_id, state=job.state)
    store = open_store(home)
    top = max((j.priority for j in store.queued() if j.id != job_id), default=job.priority - 1)
    store.update_job(job_id, priority=max(job.priority, top + 1))
