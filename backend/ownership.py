"""Whose is it: the one way a registry entry is recorded (``register``: always an owner, and the job that made it),
sharing as a decision (``share``), and which folders an entry holds (imports may not take another's, deletes
remove only what the entry made). The use rule itself is ``users.may_use``.

    python -m backend share <type> <name> [--off]        # the operator's shell (backend/__main__.py)
"""
from __future__ import annotations

from pathlib import Path

from backend import defaults, paths, users
from backend.registry import Entry, RegistryType
from backend.store import Taken, open_store

FILE_TYPES = (RegistryType.MODEL, RegistryType.ADAPTER, RegistryType.DATASET)   # entries whose path is theirs
MADE_HERE = ("models", "adapters", "datasets")    # workspace folders the workbench writes entries' files into


class RegistryRefused(users.Refused):
    """A registry name or folder the acting user may not take, or a share they may not decide."""


def register(type: RegistryType | str, name: str, path: str | Path = "", meta: dict | None = None, *,
             owner: str, job_id: int | None, shared: bool = False, home: Path | None = None) -> Entry:
    """Record what a job, an upload or an import produced: its owner (never empty) and the job that made it.
    Re-registering one's own entry updates it; a name another owner holds is refused (audited): an entry's
    owner never changes."""
    if not owner:
        raise ValueError(f"{type} {name!r}: registered without an owner")
    try:
        return open_store(home).put(type, name, str(path), meta, job_id, owner=owner, shared=shared)
    except Taken as e:
        users.refuse(owner, "register", f"{e.type} {name}",
                     RegistryRefused("err.registry.taken", type=e.type, name=name, owner=e.owner))


def check_free(type: RegistryType | str, name: str, owner: str, home: Path | None = None) -> None:
    """Before a job writes files under a name: refuse (audited) a name another owner holds."""
    entry = open_store(home).get(type, name)
    if entry is not None and entry.owner != owner:
        users.refuse(owner, "register", f"{entry.type} {name}",
                     RegistryRefused("err.registry.taken", type=entry.type, name=name, owner=entry.owner))


def share(type: RegistryType | str, name: str, shared: bool, by: users.User | str | None,
          home: Path | None = None) -> Entry:
    """Share an entry with the class (or stop): its owner's or an instructor's decision, audited."""
    store = open_store(home)
    entry = store.get(type, name)
    if entry is None:
        raise KeyError(f"no {type} {name!r}")
    user = users.acting(by)
    if user is not None and not user.instructor and user.name != entry.owner:
        users.refuse(by, "share", f"{entry.type} {name}", RegistryRefused("err.registry.share_not_yours",
                                                                          type=entry.type, name=name))
    store.set_shared(type, name, shared)
    users.audit(users.actor(by), "share" if shared else "unshare", f"{entry.type} {name}", home=home)
    return store.get(type, name)


def _overlap(a: Path, b: Path) -> bool:
    return paths.is_inside(a, b) or paths.is_inside(b, a)


def holders(path: Path, home: Path | None = None, but: Entry | None = None) -> list[str]:
    """Who else holds files at ``path`` (resolved): registry entries whose file or folder overlaps it, and jobs
    (a job's folder: checkpoints, a server's merged copy). Empty when nobody does."""
    ws = (home or defaults.home()).resolve()
    out = [f"job folder {path}"] if _overlap(path, ws / "jobs") else []
    store = open_store(home)
    for t in FILE_TYPES:
        for e in store.items(t):
            if e.path and (but is None or e.id != but.id) and _overlap(path, Path(e.path).resolve()):
                out.append(f"{e.type} {e.name}")
    return out


def check_import(folder: Path, type: RegistryType | str, name: str, owner: str, home: Path | None = None) -> None:
    """Importing ``folder`` (resolved) as ``type/name``: refused (audited) when another entry or a job holds it
    (importing the class model as ``x`` and deleting ``x``; importing a server's ``jobs/<id>/merged``)."""
    mine = open_store(home).get(type, name)
    mine = mine if mine is not None and mine.owner == owner and Path(mine.path).resolve() == folder else None
    held = holders(folder, home, but=mine)
    if held:
        users.refuse(owner, "import", str(folder), RegistryRefused("err.registry.held", path=folder, by=held[0]))


def made_here(entry: Entry, home: Path | None = None) -> bool:
    """Whether deleting ``entry`` may remove its files: only those the workbench made for it under models/,
    adapters/ or datasets/ (a job's output, an upload, a download), never an imported folder nor files another
    entry or a job also holds."""
    ws = (home or defaults.home()).resolve()
    path = Path(entry.path).resolve() if entry.path else None
    if path is None or (entry.meta or {}).get("source") == "local":
        return False
    if not any(paths.is_inside(path, ws / d) and path != ws / d for d in MADE_HERE):
        return False
    return not holders(path, home, but=entry)
