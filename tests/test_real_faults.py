"""Real faults end to end, as root (skipped otherwise, or where the kernel refuses the mount/cgroup): a
disk that fills up during a real download (a small tmpfs as the models folder, the local hub as the far
end) fails the job as disk_full with its suggestion and a retry resumes the partial file; a job the
kernel's OOM killer ends inside a memory-limited cgroup (WORKBENCH_JOB_CGROUP) is out_of_memory, while a
plain kill -9 is killed."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from backend.access import users
from backend.core import defaults
from backend.runtime import logs, procs, queue
from backend.workspace import models
from tests.conftest import start_worker, stop, wait_for
from tests.hubserver import Hub

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs and makes a cgroup")]


def state(job_id: int) -> str:
    return queue.get(job_id, home=defaults.home(), by=users.OPERATOR).state


@pytest.fixture
def small_models_disk(home):
    """``home/models`` on a 40 MiB tmpfs, unmounted afterwards."""
    target = home / "models"
    target.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(target)],
                         check=False, capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"mount refused: {out.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder: Path) -> Path:
    """Another user's file that takes every byte left on ``folder``'s disk."""
    filler = folder / "someone-elses.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_disk_full_during_a_download_is_disk_full_and_a_retry_resumes(home, tiny_model, tmp_path, small_models_disk):
    big = shutil.copytree(tiny_model, tmp_path / "big")
    (big / "extra.bin").write_bytes(os.urandom(16_000_000))
    with Hub({"camp/big": big}) as hub:
        total = sum(m["size"] for m in hub.repos["camp/big"].meta.values())
        hub.throttle = 4_000_000                 # bytes/s: the big file takes ~4 s
        w = start_worker(home)
        try:
            job = queue.submit("download", {"source": "huggingface", "repo_id": "camp/big", "endpoint": hub.url}, home=home, owner="local")
            wait_for(lambda: hub.bytes_sent > total * 0.3, 60, what="30% of the bytes")
            filler = fill(small_models_disk)     # the disk fills up under the running download
            wait_for(lambda: state(job) in ("failed", "succeeded"), 60, what="the download to end")
            j = queue.get(job, home=home, by=users.OPERATOR)
            assert j.error_class == "disk_full" and "filled up" in j.error_message, j
            assert "free some space, then retry" in logs.result(job, home)["error"]["suggestion"]
            partial = sum(p.stat().st_size for p in small_models_disk.rglob("*.incomplete"))
            assert partial > 0, "the partial file is kept for the retry"
            first = hub.bytes_sent
            filler.unlink()
            hub.throttle = 0
            retry = queue.retry(job, home=home, by=users.OPERATOR)
            wait_for(lambda: state(retry) in ("failed", "succeeded"), 60, what="the retry")
            assert state(retry) == "succeeded", logs.tail(retry, 30, home=home)
            refetched = hub.bytes_sent - first
            assert refetched <= total - partial + 2**20, (refetched, total, partial)     # Range resume
            assert models.get("big", home) is not None
        finally:
            stop(w)


@pytest.fixture
def memory_cgroup():
    """A fresh memory cgroup limited to 200 MiB (v1 memory controller, or v2), removed afterwards."""
    name = f"workbench-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/memory")
    folder, limit = (v1 / name, "memory.limit_in_bytes") if v1.is_dir() else (Path("/sys/fs/cgroup") / name, "memory.max")
    try:
        folder.mkdir()
        (folder / limit).write_text(str(200 * 2**20))
    except OSError as e:
        pytest.skip(f"cgroup refused: {e}")
    try:
        yield folder
    finally:
        wait_for(lambda: not (folder / "cgroup.procs").read_text().strip(), 30, what="the cgroup to empty")
        folder.rmdir()


def test_the_kernel_oom_killer_is_out_of_memory_and_a_plain_kill_is_killed(home, memory_cgroup):
    w = start_worker(home, WORKBENCH_JOB_CGROUP=memory_cgroup)
    try:
        hog = queue.submit("sleepy", {"steps": 1, "alloc_mb": 600}, home=home, owner="local")
        wait_for(lambda: state(hog) in ("failed", "succeeded"), 60, what="the hog to end")
        j = queue.get(hog, home=home, by=users.OPERATOR)
        assert j.error_class == "out_of_memory" and j.exit_code == -signal.SIGKILL, j
        ident = procs.recorded(home / "jobs" / str(hog))
        assert ident["oom_counter"].startswith(str(memory_cgroup)), ident     # the job's own cgroup was read
        assert procs.oom_kills(ident["oom_counter"]) > ident["oom_kills"]

        victim = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05}, home=home, owner="local")
        wait_for(lambda: state(victim) == "running", 30, what="running")
        os.kill(queue.get(victim, home=home, by=users.OPERATOR).pid, signal.SIGKILL)
        wait_for(lambda: state(victim) == "failed", 30, what="failed")
        assert queue.get(victim, home=home, by=users.OPERATOR).error_class == "killed"
    finally:
        stop(w)
    assert json.loads((home / "jobs" / str(victim) / "process.json").read_text())["oom_counter"]
