"""Processes the worker starts and stops: liveness, process groups, this process's children, and
the child-subreaper flag that makes orphans of a job come back to the worker to be reaped."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path


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
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()     # after "pid (comm)": state ppid pgrp session
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            out[int(stat.parent.name)] = (fields[0], int(fields[3]))
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
