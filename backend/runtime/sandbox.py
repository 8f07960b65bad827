"""The one door for untrusted code: ``run(code, folder, limits, stdin)`` runs Python a student or a model
wrote and returns what it printed, its exit status and, when it failed or hit a limit, why. The agent's
interpreter uses it today; reward functions and lab checks that run student code call the same function.

The code runs inside bubblewrap (``bwrap``): new user, mount, pid, network, ipc and uts namespaces, uid
and gid 65534 inside with every capability dropped, a fresh /proc (only its own processes), a minimal
/dev, a private /tmp, the system folders and the Python installation it needs read-only, and one
writable folder (its run folder, mounted at ``/files``). Nothing of the workspace or the repository is
mounted; there is no network (only the namespace's own loopback). A seccomp filter refuses every new
process (threads stay allowed), so a fork bomb cannot start; rlimits bound CPU time, memory and file
size; a wall timeout kills the whole namespace; output is cut at ``output_kb``.

When the sandbox cannot be created (bubblewrap missing, user namespaces off) the code is refused with
the reason and the fix (``refusal()``). Only the operator of a single-user box (``AUTH=none``) may run it
without the sandbox, by setting ``WORKBENCH_UNSAFE_UNSANDBOXED_CODE=1``: then only the rlimits hold.

What the code wrote is read back by ``files`` / ``read``: found with lstat and opened with O_NOFOLLOW,
never through a link, never a file with more than one hard link, each read capped.
"""
from __future__ import annotations

import errno
import os
import platform
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backend.core import defaults
from backend.core.errors import UserError

INSIDE = "/files"                 # the run folder, as the code sees it (its working folder)
CODE = "/code.py"                 # the code, a read-only file
SYSTEM = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/ld.so.cache", "/etc/alternatives")
UID = 65534                       # nobody, inside


@dataclass
class Limits:
    cpu_s: int = 10
    memory_mb: int = 1024
    wall_s: int = 30
    output_kb: int = 64
    file_mb: int = 64


def bwrap() -> str | None:
    """The bubblewrap binary (WORKBENCH_BWRAP: a name looked up in PATH, or a path), None when missing."""
    return shutil.which(defaults.setting("BWRAP"))


def bare_allowed() -> bool:
    """The operator of a single-user box asked to run untrusted code without the sandbox."""
    return bool(defaults.setting("UNSAFE_UNSANDBOXED_CODE")) and defaults.setting("AUTH").strip().lower() == "none"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def interpreter() -> tuple[str, list[str]]:
    """This Python (its venv kept) and the folders it needs, read-only: never a folder holding the
    workspace or the repository (UserError)."""
    prefix = os.path.realpath(sys.prefix)
    exe = os.path.join(prefix, os.path.relpath(sys.executable, sys.prefix))
    roots: list[str] = []
    for p in sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   sys.base_exec_prefix)}, key=len):
        if not any(_inside(p, r) for r in [*roots, *SYSTEM]):
            roots.append(p)
    for r in roots:
        for kept in (defaults.home(), defaults.ROOT):
            if _inside(os.path.realpath(kept), r):
                raise UserError("err.sandbox.bind", path=r)
    return exe, roots


def _no_processes() -> bytes:
    """A seccomp filter (classic BPF) that lets threads start but no process: fork, vfork and clone
    without CLONE_THREAD fail with EPERM, clone3 with ENOSYS (so the C library falls back to clone)."""
    arch = {"x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "clone": 56}),
            "aarch64": (0xC00000B7, {"clone": 220})}.get(platform.machine())
    if arch is None:
        raise UserError("err.sandbox.arch", arch=platform.machine())
    audit, nr = arch
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    body = [("ld", 4), ("jeq", audit, 0, "kill"), ("ld", 0), ("jge", 0x40000000, "kill", 0),   # x32 calls
            ("jeq", 435, "enosys", 0)]                                                           # clone3
    body += [("jeq", n, "eperm", 0) for name, n in nr.items() if name != "clone"]
    body += [("jeq", nr["clone"], 0, "allow"), ("ld", 16), ("jset", 0x00010000, "allow", "eperm"),
             ("allow", ALLOW), ("eperm", ERRNO | errno.EPERM), ("enosys", ERRNO | errno.ENOSYS), ("kill", KILL)]
    at = {op: i for i, (op, *_) in enumerate(body) if op in ("allow", "eperm", "enosys", "kill")}

    def jump(i, to):
        return 0 if to == 0 else at[to] - i - 1
    out = b""
    for i, (op, *a) in enumerate(body):
        if op == "ld":
            out += struct.pack("HBBI", LD, 0, 0, a[0])
        elif op in ("jeq", "jge", "jset"):
            code = {"jeq": JEQ, "jge": JGE, "jset": JSET}[op]
            out += struct.pack("HBBI", code, jump(i, a[1]), jump(i, a[2]), a[0])
        else:
            out += struct.pack("HBBI", RET, 0, 0, a[0])
    return out


def _namespaces() -> list[str]:
    return ["--unshare-all", "--unshare-user", "--uid", str(UID), "--gid", str(UID), "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            *[a for p in SYSTEM if os.path.lexists(p) for a in ("--ro-bind", p, p)]]


def refusal() -> UserError | None:
    """Why untrusted code cannot run here (None when the sandbox works): bubblewrap missing, user
    namespaces off, or an interpreter that lives in the workspace's or the repository's folder."""
    exe = bwrap()
    if exe is None:
        return UserError("err.sandbox.no_bwrap", bwrap=defaults.setting("BWRAP"))
    try:
        interpreter()
        _no_processes()
    except UserError as e:
        return e
    probe = subprocess.run([exe, *_namespaces(), "--", "/bin/true"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        return UserError("err.sandbox.no_userns", detail=(probe.stderr.strip().splitlines() or ["?"])[-1])
    return None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _argv(exe: str, folder: Path, code_fd: int, filter_fd: int) -> list[str]:
    python, roots = interpreter()
    env = {"HOME": INSIDE, "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": "/tmp/matplotlib", "MPLBACKEND": "Agg",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return [exe, *_namespaces(), *[a for r in roots for a in ("--ro-bind", r, r)],
            "--bind", str(folder), INSIDE, "--ro-bind-data", str(code_fd), CODE, "--seccomp", str(filter_fd),
            "--chdir", INSIDE, "--clearenv", *[a for k, v in env.items() for a in ("--setenv", k, v)],
            "--", python, "-I", "-B", CODE]


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """The regular files under ``folder`` (names relative to it) with their (size, mtime_ns), found with
    lstat: a link (symbolic or a second hard link) is never listed, a linked folder never entered."""
    found = {}
    for top, _dirs, names in os.walk(folder):          # os.walk does not follow links to folders
        for n in names:
            path = os.path.join(top, n)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


def read(folder: Path, name: str, cap: int) -> bytes:
    """The first ``cap`` bytes of file ``name`` under ``folder``, opened component by component with
    O_NOFOLLOW (OSError for a link anywhere on the way, a file that is not regular or has other hard links)."""
    parts = Path(name).parts
    if not parts or any(p in ("..", "/") for p in parts) or Path(name).is_absolute():
        raise OSError(errno.EINVAL, "not a name inside the folder", name)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for p in parts[:-1]:
            nxt = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(f, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EPERM, "not a plain file", name)
        return fh.read(cap)


def run(code: str, folder: Path, limits: Limits = Limits(), stdin: bytes = b"") -> dict:
    """Run ``code`` (Python) with ``stdin`` in the sandbox, ``folder`` its only writable folder. Returns
    {ok, output, exit, error, files}: output what it printed (cut at the limit), exit its exit status,
    error a sentence when it failed, hit a limit or could not start (what the caller shows, or the model
    reads), files the new or changed files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    exe, why = bwrap(), refusal()
    if why is not None and not bare_allowed():
        return {"ok": False, "output": "", "exit": None, "error": str(why), "files": []}
    before = files(folder)
    mem = limits.memory_mb * 2**20

    def limit():
        os.umask(0o077)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    fds = []
    if why is None:
        fds = [_memfd("code", code.encode()), _memfd("seccomp", _no_processes())]
        argv = _argv(exe, folder, *fds)
    else:                                   # the operator's single-user box, WORKBENCH_UNSAFE_UNSANDBOXED_CODE
        argv = [sys.executable, "-I", "-B", "-c", code]
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=folder, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder)},
                                    pass_fds=fds, start_new_session=True, preexec_fn=limit)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            proc.communicate(stdin, timeout=limits.wall_s)
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
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0     # bwrap exits 128 + the signal that ended the code
    if error is None and rc != 0:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        if sig in (signal.SIGXCPU, signal.SIGKILL) and time.monotonic() - t0 >= limits.cpu_s * 0.5:
            error = f"stopped: the code used more than {limits.cpu_s} s of CPU time"
        elif sig == signal.SIGXFSZ or "File too large" in last:
            error = f"stopped: the code wrote a file larger than {limits.file_mb} MB"
        elif "MemoryError" in last or "Cannot allocate memory" in last:
            error = f"stopped: the code used more than {limits.memory_mb} MB of memory"
        elif "Operation not permitted" in last and ("fork" in text or "spawn" in text):
            error = f"the code may not start another process ({last})"
        else:
            error = last or f"the code ended with exit code {rc}"
    after = files(folder)
    changed = [n for n, v in after.items() if before.get(n) != v]
    return {"ok": error is None, "output": text, "exit": rc, "error": error, "files": changed}
