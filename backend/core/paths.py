"""The workspace's layout and the one rule for paths a user gives.

Every path that comes from a user, a spec, a hub listing or a request is resolved by ``inside``:
inside a root folder, or refused. Every file that readers must see whole is written by
``atomic_file`` / ``atomic_write``. Sizes are shown by ``human_size`` (powers of 1024, as ``du -h`` and file managers).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from backend.core.errors import UserError


class OutsideError(UserError):
    """A path that leaves every folder it was allowed in; the message (a key and fields) names it."""


PRIVATE_UMASK = 0o077            # the launcher, the worker, the app, the CLI and every job create files only their user reads


def private_workspace(db: Path) -> None:
    """The workspace folder 0700 and its database 0600 (with its WAL files), also when made before."""
    db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db.parent.chmod(0o700)
    os.close(os.open(db, os.O_RDONLY | os.O_CREAT, 0o600))
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.chmod(0o600)


def job_dir(job_id: int, home: Path) -> Path:
    return home / "jobs" / str(job_id)


def queue_wake_file(home: Path) -> Path:
    """Touched on every submit so an idle worker starts the job at once instead of at its next poll."""
    return home / "jobs" / ".wake"


def gallery_dir(home: Path) -> Path:
    """The workspace's image gallery: the only images a model server is sent (vlm) and composes with."""
    return home / "gallery"


def user_gallery(name: str = "", *, home: Path) -> Path:
    """A student's own images (XComposer uploads in class mode), seen by them and the instructors only; with
    no name, the folder that holds every student's."""
    folders = gallery_dir(home) / "users"
    return inside(folders, name) if name else folders


def is_inside(path: Path, root: Path) -> bool:
    """``path`` (already resolved) is ``root`` or below it."""
    return path == root or root in path.parents


def inside(roots: Path | list[Path], user_path: str | Path, must_exist: bool = False) -> Path:
    """``user_path`` resolved against the first root (when relative) and checked to stay inside one of
    ``roots`` after following symlinks. Refused: NUL bytes, a path that leaves every root (``..``,
    an absolute path elsewhere, a symlink out), and with ``must_exist`` a path that isn't there."""
    roots = [Path(r).resolve() for r in (roots if isinstance(roots, list) else [roots])]
    text = str(user_path)
    if "\0" in text or not text.strip():
        raise OutsideError("err.path.unusable", path=text)
    p = Path(os.path.expanduser(text))
    real = (p if p.is_absolute() else roots[0] / p).resolve()
    if not any(is_inside(real, r) for r in roots):
        raise OutsideError("err.path.outside", path=user_path, roots=", ".join(map(str, roots)))
    if must_exist and not real.exists():
        raise OutsideError("err.path.missing", path=user_path)
    return real


@contextlib.contextmanager
def atomic_file(target: Path):
    """A binary file to write that appears at ``target`` whole, or not at all, when the block ends: a
    reader (another session, the worker) never sees half of it. The temporary file has a unique name,
    so two threads or processes writing at once never collide."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(target: Path, data: bytes | str) -> None:
    with atomic_file(target) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def human_size(n: float | None) -> str:
    """1536 -> '1.5 KB' (powers of 1024); None -> '-'."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
