"""The Agent page's side of the agent job (jobs/agent.py): ask, continue a conversation, follow its steps,
export its trace and list the files its interpreter wrote.

A run's steps come from the job's events through the live machinery's shared parse (backend/runtime/live.py), so a
page follows a run the way the Jobs page follows any job. Only the owner continues a run; a student sees
only their own runs (``queue.get`` decides, with the acting user passed in).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from backend.access import users
from backend.core import defaults
from backend.pipeline import chat
from backend.runtime import events, logs, queue, sandbox
from backend.core.paths import job_dir
from backend.kinds.agent import KEY_SECRET

IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")


def endpoints(by: users.Actor, home: Path) -> list[dict]:
    """The live endpoints ``by`` may ask: their own servers and the class's (as on the Chat page)."""
    return chat.endpoints(home, by=by)


def runs(by: users.Actor, home: Path, limit: int = 50) -> list:
    """``by``'s own agent runs, newest first."""
    user = users.acting(by, home=home)
    return queue.list_jobs(kind="agent", owner=None if user is users.OPERATOR else user.name, limit=limit, home=home, by=by)


def run(job_id: int, by: users.Actor, home: Path):
    """Agent run ``job_id`` if ``by`` may see it (KeyError when there is no such run; ``queue.Refused``)."""
    job = queue.get(job_id, home, by=by)
    if job.kind != "agent":
        raise KeyError(f"job {job_id} is not an agent run")
    return job


def conversation(job_id: int, by: users.Actor, home: Path) -> list[dict]:
    """The turns up to and with run ``job_id`` (what a follow-up carries): only from ``by``'s own run. A run
    stopped before it answered adds its question only."""
    job = queue.get(job_id, home, by=by)
    user = users.acting(by, home=home)
    if job.kind != "agent" or (user is not users.OPERATOR and user.name != job.owner):
        users.refuse(by, "continue", f"job {job_id}", queue.Refused("err.agent.not_yours", job=job_id), home=home)
    answer = (logs.result(job_id, home) or {}).get("answer")
    turn = [{"role": "user", "content": job.spec["prompt"]}]
    return [*job.spec.get("history", []), *turn, *([{"role": "assistant", "content": answer}] if answer else [])]


def ask(prompt: str, by: users.Actor, endpoint: str = "", url: str = "", model: str = "",
        key: str = "", tools: tuple[str, ...] = ("python",), after: int | None = None, *, home: Path) -> int:
    """Queue an agent run against live ``endpoint`` (one ``by`` may use) or an outside ``url`` (``key`` goes to
    the job as a secret, never into the spec); ``after``: the run this one follows in the conversation."""
    if endpoint:
        chat.check_use({"name": endpoint}, by, home=home)
    spec = {"prompt": prompt, "tools": list(tools), "history": conversation(after, by, home) if after else [],
            **({"endpoint": endpoint} if endpoint else {"url": url, "model": model})}
    user = users.acting(by, home=home)
    return queue.submit("agent", spec, owner=user.name, home=home,
                        secrets={KEY_SECRET: key} if key and not endpoint else None)


def steps(job_id: int, home: Path) -> tuple[dict, ...]:
    """The run's steps so far (``model``, ``tool``, ``answer`` events), parsed once for every viewer."""
    return events.events(job_id, home=home).steps


def thought(text: str) -> str:
    """What the model thought in a ReAct step: its text before the action or the final answer."""
    return re.split(r"(?m)^\s*(?:Action:|Final Answer:)", text)[0].replace("Thought:", "", 1).strip()


def files_dir(job_id: int, home: Path) -> Path:
    """The run's interpreter folder: what its code wrote."""
    return job_dir(job_id, home) / "artifacts" / "files"


def files(job_id: int, home: Path) -> list[str]:
    """The names of the files the run's interpreter wrote (plots, CSVs), listed with lstat: never a link."""
    folder = files_dir(job_id, home)
    return list(sandbox.files(folder)) if folder.is_dir() else []


def file_bytes(job_id: int, name: str, by: users.Actor, home: Path) -> bytes:
    """File ``name`` of run ``job_id`` (one ``by`` may see), read when a user opens it: never through a
    link, never a file with other hard links, at most SANDBOX_READ_MAX_MB (OSError when it cannot be read)."""
    run(job_id, by, home)
    return sandbox.read(files_dir(job_id, home), name, defaults.SANDBOX_READ_MAX_MB * 2**20)


def trace(job_id: int, by: users.Actor, home: Path) -> dict:
    """The run as one record: its question, the turns before it, every step, its state and files."""
    job = run(job_id, by, home)
    return {"job": job_id, "state": job.state, "owner": job.owner,
            "target": job.spec.get("endpoint") or f"{job.spec.get('model')} @ {job.spec.get('url')}",
            "history": job.spec.get("history", []), "prompt": job.spec["prompt"],
            "steps": [{k: v for k, v in s.items() if k != "t"} for s in steps(job_id, home)],
            "files": files(job_id, home)}


def trace_json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, indent=2)


def trace_markdown(record: dict) -> str:
    lines = [f"# Agent run {record['job']}", "", f"- target: {record['target']}", f"- state: {record['state']}",
             f"- files: {', '.join(record['files']) or '-'}", ""]
    for m in record["history"]:
        lines += [f"## {m['role']}", "", m["content"], ""]
    lines += ["## user", "", record["prompt"], ""]
    for s in record["steps"]:
        if s["type"] == "model":
            lines += ["## model", "", s["text"], ""]
        elif s["type"] == "tool":
            lines += [f"## {s['tool']}", "", "```python", s["code"], "```", "", "```", s["output"] or "(no output)", "```", ""]
            lines += [f"> {s['error']}", ""] if s.get("error") else []
        else:
            lines += ["## answer", "", s["text"], ""]
    return "\n".join(lines)
