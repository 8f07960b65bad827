"""Whose is it: the one way a registry entry is recorded (``register``: always an owner, and the job that made it),
sharing as a decision (``share``), and which folders an entry holds (imports may not take another's, deletes
remove only what the entry made). The use rule itself is ``users.may_use``.

    python -m backend share <type> <name> [--off]        # the operator's shell (backend/__main__.py)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from backend.access import users
from backend.core import paths
from backend.core.registry import Entry, RegistryType
from backend.core.store import Taken, open_store

FILE_TYPES = (RegistryType.MODEL, RegistryType.ADAPTER, RegistryType.DATASET)   # entries whose path is theirs
MADE_HERE = ("models", "adapters", "datasets")    # workspace folders the workbench writes entries' files into


class RegistryRefused(users.Refused):
    """A registry name or folder the acting user may not take, or a share they may not decide."""


def register(type: RegistryType | str, name: str, path: str | Path = "", meta: dict | None = None, *, owner: str,
             job_id: int | None, shared: bool = False, home: Path) -> Entry:
    """Record what a job, an upload or an import produced: its owner (never empty) and the job that made it.
    Re-registering one's own entry updates it; a name another owner holds is refused (audited): an entry's
    owner never changes."""
    if not owner:
        raise ValueError(f"{type} {name!r}: registered without an owner")
    try:
        return open_store(home).put(type, name, str(path), meta, job_id, owner=owner, shared=shared)
    except Taken as e:
        _taken(owner, e.type, name, e.owner, home)


def check_free(type: RegistryType | str, name: str, owner: str, home: Path) -> None:
    """Before a job writes files under a name: refuse (audited) a name another owner holds."""
    entry = open_store(home).get(type, name)
    if entry is not None and entry.owner != owner:
        _taken(owner, entry.type, name, entry.owner, home)


def _taken(owner: str, type: str, name: str, holder: str, home: Path):
    users.refuse(owner, "register", f"{type} {name}", RegistryRefused("err.registry.taken", type=type, name=name,
                                                                       owner=holder), home)


def may_share(entry: Entry, by: users.Actor, home: Path) -> bool:
    """Sharing is its owner's decision, or an instructor's (the operator's shell may too)."""
    return users.may_manage(entry.owner, by, home)


def share(type: RegistryType | str, name: str, shared: bool, by: users.Actor, home: Path) -> Entry:
    """Share an entry with the class (or stop): its owner's or an instructor's decision, audited."""
    store = open_store(home)
    entry = store.get(type, name)
    if entry is None:
        raise KeyError(f"no {type} {name!r}")
    if not may_share(entry, by, home=home):
        users.refuse(by, "share", f"{entry.type} {name}", RegistryRefused("err.registry.share_not_yours",
                                                                          type=entry.type, name=name), home=home)
    store.set_shared(type, name, shared)
    users.audit(users.actor(by, home=home), "share" if shared else "unshare", f"{entry.type} {name}", home=home)
    return store.get(type, name)


def delete(type: RegistryType | str, name: str, by: users.Actor, home: Path, delete_files: bool = True,
           error: users.Refused | None = None) -> dict:
    """Forget an entry: its owner or an instructor (the operator's, only an instructor), audited; its files go
    too only where the workbench made them for it (made_here). ``error``: the refusal to raise instead."""
    store = open_store(home)
    entry = store.get(type, name)
    if entry is None:
        raise KeyError(f"no {type} {name!r}")
    users.require_owner(by, entry.owner, "delete", f"{entry.type} {name}",
                        error or RegistryRefused("err.registry.delete_not_yours", type=entry.type, name=name), home=home)
    users.audit(users.actor(by, home=home), "delete", f"{entry.type} {name}", home=home)
    path = Path(entry.path).resolve() if entry.path else None
    removed = bool(delete_files and path and path.exists() and made_here(entry, home))
    if removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    store.delete(type, name)
    return {"name": name, "path": str(path or ""), "files_removed": removed}


def _overlap(a: Path, b: Path) -> bool:
    return paths.is_inside(a, b) or paths.is_inside(b, a)


def holders(path: Path, home: Path, but: Entry | None = None) -> list[str]:
    """Who else holds files at ``path`` (resolved): registry entries whose file or folder overlaps it, and jobs
    (a job's folder: checkpoints, a server's merged copy). Empty when nobody does."""
    ws = home.resolve()
    out = [f"job folder {path}"] if _overlap(path, ws / "jobs") else []
    store = open_store(home)
    for t in FILE_TYPES:
        for e in store.items(t):
            if e.path and (but is None or e.id != but.id) and _overlap(path, Path(e.path).resolve()):
                out.append(f"{e.type} {e.name}")
    return out


def check_import(folder: Path, type: RegistryType | str, name: str, owner: str, home: Path) -> None:
    """Importing ``folder`` (resolved) as ``type/name``: refused (audited) when another entry or a job holds it
    (importing the class model as ``x`` and deleting ``x``; importing a server's ``jobs/<id>/merged``)."""
    mine = open_store(home).get(type, name)
    mine = mine if mine is not None and mine.owner == owner and Path(mine.path).resolve() == folder else None
    held = holders(folder, home, but=mine)
    if held:
        users.refuse(owner, "import", str(folder), RegistryRefused("err.registry.held", path=folder, by=held[0]), home=home)


def made_here(entry: Entry, home: Path) -> bool:
    """Whether deleting ``entry`` may remove its files: only those the workbench made for it under models/,
    adapters/ or datasets/ (a job's output, an upload, a download), never an imported folder nor files another
    entry or a job also holds."""
    ws = home.resolve()
    path = Path(entry.path).resolve() if entry.path else None
    if path is None or (entry.meta or {}).get("source") == "local":
        return False
    if not any(paths.is_inside(path, ws / d) and path != ws / d for d in MADE_HERE):
        return False
    return not holders(path, home, but=entry)


NAMED = {"model": RegistryType.MODEL, "base_model": RegistryType.MODEL, "adapter": RegistryType.ADAPTER,
         "endpoint": RegistryType.ENDPOINT, "dataset": RegistryType.DATASET, "datasets": RegistryType.DATASET,
         "kb": RegistryType.KB, "embedding_model": RegistryType.MODEL,
         "reranker": RegistryType.MODEL}
PATH_KEYS = ("path", "peft_path", "tokenizer_path")   # a folder or file given by its path (evaluate, vlm)


def holding(path: str | Path, home: Path) -> list:
    """The entries whose file or folder holds ``path`` (it is theirs or inside theirs), and the job whose folder
    does (checkpoints, a server's merged copy)."""
    ws = home.resolve()
    path = (ws / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    store = open_store(home)
    out = [e for t in FILE_TYPES for e in store.items(t) if e.path and paths.is_inside(path, Path(e.path).resolve())]
    if paths.is_inside(path, ws / "jobs") and path != ws / "jobs":
        job_id = path.relative_to(ws / "jobs").parts[0]
        job = store.job(int(job_id)) if job_id.isdigit() else None
        out += [job] if job is not None else []
    return out


def uses(spec: dict, home: Path) -> list:
    """Every registry entry (and job folder) a job spec names: models, adapters, endpoints and datasets by name
    (``model``, ``base_model``, ``adapter``, ``endpoint``, ``dataset``, ``datasets``), files and folders by path,
    endpoints by URL. What the use rule is asked about at submit."""
    store, out = open_store(home), []

    def named(type: RegistryType, value: str) -> list:
        entry = store.get(type, value)
        return [entry] if entry is not None else holding(value, home) if type == RegistryType.DATASET else []

    def walk(d: dict) -> None:
        for key, value in d.items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, dict):
                    walk(v)
                elif isinstance(v, str) and v and key in NAMED:
                    out.extend(named(NAMED[key], v))
                elif isinstance(v, str) and v and key in PATH_KEYS:
                    out.extend(holding(v, home))
                elif isinstance(v, str) and v and key == "url":
                    out.extend(e for e in store.items(RegistryType.ENDPOINT) if e.meta.get("url") == v)
    walk(spec)
    return out


def label(thing) -> tuple[str, str]:
    """(type, name) of an entry, or ("job", id) of a job, for messages."""
    return (str(thing.type), thing.name) if isinstance(thing, Entry) else ("job", str(thing.id))


def check_use(thing, who: users.Actor, action: str, error: type[users.Refused] = RegistryRefused, *,
              home: Path) -> None:
    """Refuse (audited, ``error`` with a keyed sentence) what ``who`` may not use (users.may_use)."""
    if not users.may_use(thing, who, home):
        type, name = label(thing)
        users.refuse(who, action, f"{type} {name}",
                     error("err.users.dataset_not_yours", name=name) if type == RegistryType.DATASET
                     else error("err.registry.not_yours", type=type, name=name), home)


def items(type: RegistryType | str, by: users.Actor, home: Path) -> list[Entry]:
    """The entries of ``type`` that ``by`` may list and use (users.may_use), newest first."""
    return [e for e in open_store(home).items(type) if users.may_use(e, by, home=home)]


def get(type: RegistryType | str, name: str, by: users.Actor, home: Path, action: str = "open") -> Entry | None:
    """One entry, refused (audited) when ``by`` may not use it; None when there is none."""
    entry = open_store(home).get(type, name)
    if entry is not None:
        check_use(entry, by, action, home=home)
    return entry
