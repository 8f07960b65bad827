"""The agent's Python interpreter: the model's code in a separate process inside one folder, with hard
limits. CPU time, memory and file size are rlimits (the kernel enforces them); wall time is a timeout
that kills the process group; output is cut at ``output_kb``. An audit hook (PEP 578) refuses sockets,
subprocesses and files outside the folder (reading the Python installation stays allowed). The hook
is a guard against mistakes and casual code, not a jail against a determined attacker (ctypes can
step around it): run the agent only on models you give a shell to.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BOOT = r'''
import os, sys
folder = os.path.realpath(sys.argv[1])
readable = [os.path.realpath(p) for p in sys.argv[2:]]
def _inside(p, roots):
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)
def _hook(event, args):
    if event == "open":
        path, mode = args[0], args[1]
        if isinstance(path, int) or path is None:
            return
        p = os.path.realpath(os.fsdecode(path))
        write = any(c in str(mode or "r") for c in "wax+")
        if _inside(p, [folder]) or (not write and _inside(p, readable)):
            return
        raise PermissionError(f"the interpreter may only use files inside its folder, not {p}")
    if event.startswith("socket.") and event != "socket.__new__":
        raise PermissionError("the interpreter has no network access")
    if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn"):
        raise PermissionError("the interpreter may not start other programs")
code = sys.stdin.read()
sys.argv = ["agent"]
sys.addaudithook(_hook)
exec(compile(code, "<agent code>", "exec"), {"__name__": "__main__"})
'''


@dataclass
class Limits:
    cpu_s: int = 10
    memory_mb: int = 1024
    wall_s: int = 30
    output_kb: int = 64
    file_mb: int = 64


def readable_roots() -> list[str]:
    """What the code may read outside its folder: the Python installation and system libraries/fonts."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.devnull, "/usr/lib", "/usr/share", "/usr/local/lib",
             "/proc/self", "/dev/urandom", "/sys/devices/system/cpu"}
    return sorted(str(Path(r).resolve()) for r in roots)


def run_code(code: str, folder: Path, limits: Limits = Limits()) -> dict:
    """Run ``code``; returns {ok, output, error, files}: output is what it printed (cut at the limit),
    error a sentence when it failed or hit a limit, files the new or changed files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}

    def limit():
        os.setsid()
        mem = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "MPLCONFIGDIR": str(folder / ".matplotlib"),
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-c", BOOT, str(folder), *readable_roots()], cwd=folder,
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=limit)
        try:
            proc.communicate(code.encode(), timeout=limits.wall_s)
            error = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            error = f"stopped: the code ran longer than {limits.wall_s} s of wall time"
        out.seek(0)
        raw = out.read(limits.output_kb * 1024 + 1)
    text = raw[:limits.output_kb * 1024].decode(errors="replace")
    if len(raw) > limits.output_kb * 1024:
        text += f"\n[output cut at {limits.output_kb} KB]"
    rc = proc.returncode
    if error is None and rc != 0:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        if rc in (-signal.SIGXCPU, -signal.SIGKILL) and time.monotonic() - t0 >= limits.cpu_s * 0.5:
            error = f"stopped: the code used more than {limits.cpu_s} s of CPU time"
        elif rc == -signal.SIGXFSZ:
            error = f"stopped: the code wrote a file larger than {limits.file_mb} MB"
        elif "MemoryError" in last or "Cannot allocate memory" in last:
            error = f"stopped: the code used more than {limits.memory_mb} MB of memory"
        else:
            error = last or f"the code ended with exit code {rc}"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and ".matplotlib" not in p.parts and before.get(p) != p.stat().st_mtime)
    return {"ok": error is None, "output": text, "error": error, "files": files}
