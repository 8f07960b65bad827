"""The instructor's view of a class: roster with each person's jobs, the announcement every page shows, and
lab progress (who has reached which pipeline step). Reading any of it is an instructor's right."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from backend.access import users
from backend.runtime import queue
from backend.core.states import JobState
from backend.core.store import open_store

ANNOUNCEMENT = ("announcement", "class")        # a registry entry: (type, name); its meta holds the text
# a pipeline step is reached when a job of this kind succeeded; "chat" when the audit log has a chat answered
# by any server (their own or the class's)
STEPS = {"dataset": ("dataset_import", {JobState.SUCCEEDED}),
         "finetune": ("finetune", {JobState.SUCCEEDED}),
         "evaluate": ("evaluate", {JobState.SUCCEEDED}),
         "chat": None}


def _instructor(by: users.Actor, what: str, home: Path) -> None:
    users.require_instructor(by, what, "class", users.Refused("err.class.console"), home)


def roster(by, home: Path) -> list[dict]:
    """One row per account: role, running and queued jobs, GPU memory held, GPU-hours today
    (queue.gpu_hours_today), disk used (users.disk_usage), last activity."""
    _instructor(by, "roster", home)
    store = open_store(home)
    active = store.jobs(states=[JobState.QUEUED, JobState.STARTING, JobState.RUNNING], limit=10_000)
    running = Counter(j.owner for j in active if j.state != JobState.QUEUED.value)
    queued = Counter(j.owner for j in active if j.state == JobState.QUEUED.value)
    gpu_mem = Counter()
    for j in active:
        if j.given and j.given.get("gpus"):
            gpu_mem[j.owner] += float(j.given.get("gpu_mem_gb") or 0)
    today = queue.gpu_hours_today(home)
    disk = users.disk_usage(home)
    last = store.last_activity()
    return [{"name": u["name"], "role": u["role"], "disabled": bool(u["disabled"]), "running": running[u["name"]],
             "queued": queued[u["name"]], "gpu_mem_gb": round(gpu_mem[u["name"]], 1),
             "gpu_hours_today": round(today.get(u["name"], 0.0), 2), "disk_bytes": disk.get(u["name"], 0),
             "last_activity": last.get(u["name"])}
            for u in store.users()]


def progress(by, home: Path) -> list[dict]:
    """One row per student: which pipeline steps they reached (True/False)."""
    _instructor(by, "progress", home)
    store = open_store(home)
    reached: dict[str, set[str]] = {}
    for step, job in STEPS.items():
        for j in store.jobs(kind=job[0], states=list(job[1]), limit=100_000) if job else ():
            reached.setdefault(j.owner, set()).add(step)
    for name in store.audit_actors("chat"):
        reached.setdefault(name, set()).add("chat")
    for d in store.items("dataset"):          # an upload or a conversion counts as a dataset too
        if d.owner:
            reached.setdefault(d.owner, set()).add("dataset")
    return [{"name": u["name"], **{step: step in reached.get(u["name"], set()) for step in STEPS}}
            for u in store.users() if u["role"] == "student"]


def progress_csv(by, home: Path) -> str:
    rows = progress(by, home)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["name", *STEPS])
    w.writeheader()
    w.writerows({k: (("yes" if v else "no") if isinstance(v, bool) else v) for k, v in r.items()} for r in rows)
    return out.getvalue()


def announcement(home: Path) -> str:
    """The class announcement every page shows ('' for none)."""
    row = open_store(home).get(*ANNOUNCEMENT)
    return row.meta.get("text", "") if row else ""


def set_announcement(text: str, by, home: Path) -> None:
    users.require_instructor(by, "announce", "class", users.Refused("err.class.announce"), home=home)
    text = text.strip()[:500]
    store = open_store(home)
    if text:
        store.put(*ANNOUNCEMENT, meta={"text": text}, owner=users.actor(by, home=home))
    else:
        store.delete(*ANNOUNCEMENT)
    users.audit(users.actor(by, home=home), "announce", "class", detail=text, home=home)
