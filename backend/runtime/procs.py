"""Processes the worker starts and stops: liveness, process groups, this process's children, the
child-subreaper flag that makes orphans of a job come back to the worker to be reaped; who a job's
process is (pid + start time + boot), whether the out-of-memory killer ended it, and the
one-worker-per-workspace lock.

A pid alone names a process only until it ends: pids are reused (soon after a reboot, where a recorded
pid may belong to anything). So a job's process is recorded at launch as ``{pid, start, boot}``, the
start time in clock ticks since boot from ``/proc/<pid>/stat``, and a pid is acted on only while it
still names that process.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
from pathlib import Path

from backend.core import paths


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children() -> dict[int, tuple[str, int]]:
    """This process's children: pid -> (state letter, session id), from /proc."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(proc.name))
        if fields and int(fields[1]) == os.getpid():
            out[int(proc.name)] = (fields[0], int(fields[3]))
    return out


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def become_subreaper() -> None:
    """Make orphaned descendants (a task whose parent died first, a process started in a session of its
    own) children of this process instead of init, so it can stop and reap them: some inits never do."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)       # PR_SET_CHILD_SUBREAPER (Linux)
    except (OSError, AttributeError):
        pass


# -- who a job's process is -------------------------------------------------------------------------
PROCESS_FILE = "process.json"        # in the job folder: the identity of the job's process


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after "pid (comm)": [state, ppid, pgrp, session, ...]; None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> dict | None:
    """``{pid, start, boot}`` of a live process, or None."""
    fields = _stat(pid)
    return {"pid": pid, "start": int(fields[19]), "boot": boot_id()} if fields else None


def same(ident: dict | None) -> str:
    """Whether the process recorded as ``ident`` is still there: "alive", "gone" (ended; a zombie is
    ended), or "other" (its pid now names another process)."""
    if not ident or not ident.get("pid"):
        return "gone"
    fields = _stat(ident["pid"])
    if fields is None:
        return "gone"
    if int(fields[19]) != ident.get("start") or ident.get("boot", "") != boot_id():
        return "other"
    return "gone" if fields[0] in "ZX" else "alive"


def record(job_dir: Path, ident: dict) -> None:
    paths.atomic_write(job_dir / PROCESS_FILE, json.dumps(ident))


def recorded(job_dir: Path) -> dict | None:
    try:
        data = json.loads((job_dir / PROCESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the out-of-memory killer -------------------------------------------------------------------------
def oom_counter(pid: int | str = "self") -> str | None:
    """The file where the kernel counts OOM kills in ``pid``'s memory cgroup (v2 ``memory.events``, v1
    ``memory.oom_control``: both say ``oom_kill N``), or None where the kernel does not say."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            files += [Path("/sys/fs/cgroup", rel, "memory.events"), Path("/sys/fs/cgroup/unified", rel, "memory.events")]
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory", rel, "memory.oom_control"))
    return next((str(f) for f in files if oom_kills(f) is not None), None)


def oom_kills(counter: str | Path | None) -> int | None:
    """The OOM kill count in an ``oom_counter`` file; None where it can't be read."""
    try:
        m = re.search(r"^oom_kill (\d+)$", Path(counter).read_text(), re.M) if counter else None
    except OSError:
        return None
    return int(m.group(1)) if m else None


def place(pid: int, cgroup: str) -> None:
    """Move ``pid`` into a cgroup folder (v1 or v2: its ``cgroup.procs``); its children follow it."""
    Path(cgroup, "cgroup.procs").write_text(str(pid))


def kernel_log_oom(pid: int, since_s: float = 0.0) -> bool | None:
    """Whether the kernel log says the OOM killer killed ``pid`` at or after ``since_s`` seconds after boot
    (so an older process that had the same pid does not count); None where the log cannot be read."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    pattern = re.compile(rf"^\d+,\d+,(\d+),[^;]*;.*Killed process {pid}\b".encode())
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except BrokenPipeError:          # records overwritten while reading: go on
                continue
            except OSError:
                return None
            if not rec:
                return False
            m = pattern.search(rec)
            if m and int(m.group(1)) >= since_s * 1e6:
                return True
    finally:
        os.close(fd)


def killed_by_oom(ident: dict) -> bool | None:
    """Whether the OOM killer ended the process recorded as ``ident`` (``identity`` + ``oom_counter`` and
    its ``oom_kills`` at launch): the kernel log if readable, else its cgroup's count having risen; None
    when neither says."""
    said = kernel_log_oom(ident["pid"], ident.get("start", 0) / os.sysconf("SC_CLK_TCK"))
    if said:
        return True
    now, before = oom_kills(ident.get("oom_counter")), ident.get("oom_kills")
    if now is not None and before is not None:
        return now > before
    return said


# -- one worker per workspace ---------------------------------------------------------------------------
class AlreadyRunning(RuntimeError):
    pass


def lock_workspace(home: Path):
    """Hold ``home/worker.lock`` for the life of this process (released by the kernel when it ends, even by
    SIGKILL); raise AlreadyRunning when another worker holds it."""
    path = home / "worker.lock"
    f = open(path, "a+")                  # not inherited by jobs (close-on-exec): a job cannot keep it held
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(f"another worker (pid {holder}) is already running on the workspace {home}; "
                             f"stop it first, or use one worker per workspace") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
