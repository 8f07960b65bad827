"""The worker daemon: claims queued jobs, places them, runs them as subprocesses, watches them.

    python -m backend worker [--burst]

Each job runs as ``<engine python> -m <kind module> <job_dir>/spec.json`` in its own process
group, with stdout and stderr appended to ``run.log``; or, with WORKBENCH_EXECUTOR=slurm or ray, as a
job of that cluster (backend/runtime/executors), which the worker launches, polls and cancels the same way. The store is the source of truth. One worker
per workspace (a lock file). A restarted worker adopts the jobs whose processes still live (the same
pid and start time, recorded at launch in the job folder's process.json), records the ones that ended
meanwhile from their result.json, and marks only the rest ``lost``. An error while handling one job
fails that job, never the loop.

The worker is a child subreaper: what a job leaves behind (a process started in a session of its
own, a task whose parent died) becomes the worker's child, and is stopped and reaped once no running
job's session holds it, so nothing a job started outlives it, even as a zombie.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from backend.core import defaults, errors
from backend.core.job import Job
from backend.runtime import engines, executors, job_env, logs, placement, procs, queue
from backend.kinds import catalog as kinds
from backend.core.errors import (
    BAD_INPUT,
    CANCELLED,
    CRASH,
    EXIT_OK,
    LOST,
    MISSING_ENGINE,
    TIMEOUT,
    UserError,
)
from backend.core.paths import job_dir, queue_wake_file
from backend.runtime.procs import become_subreaper, children, kill_group, pid_alive
from backend.core.registry import RegistryType
from backend.core.states import PENDING, JobState
from backend.core.store import Store, open_store

WAKE_S = 0.02


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@dataclass
class Running:
    job_id: int
    pid: int
    started: float
    timeout_s: float
    proc: subprocess.Popen | None = None  # None for a job adopted from a worker that died: not our child
    ident: dict | None = None             # procs.identity of the job's process (+ its oom_counter, oom_kills at launch)
    term_sent: float | None = None
    reason: str | None = None            # why the worker is stopping it: cancelled, timeout, shutdown
    log: object = field(default=None, repr=False)
    remote: executors.Handle | None = None   # a job on a cluster (slurm, ray): no process of ours
    result: Path | None = None               # its result.json: once there, the cluster is asked sooner

    def ended(self) -> bool:
        if self.remote is not None:
            return self.remote.poll(soon=self.result.exists()).ended
        if self.proc is not None:
            return self.proc.poll() is not None
        return procs.same(self.ident) != "alive"


class Worker:
    def __init__(self, home: Path, cpu_slots: int | None = None, burst: bool = False, gpu_source=placement.gpus):
        self.home = home
        self.store: Store = open_store(self.home)
        self.cpu_slots = defaults.setting("CPU_SLOTS") if cpu_slots is None else cpu_slots
        self.burst = burst
        self.gpu_source = gpu_source
        self.executor = executors.module(defaults.setting("EXECUTOR"))      # None: local subprocesses
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running: dict[int, Running] = {}
        self.stopping = False
        self._beat = 0.0
        self._gpus: list[placement.GPU] = []

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        self.start()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            while not self.stopping:
                self._guard("the worker loop", self.tick)
                if self.burst and not self.running and not self.store.queued():
                    break
                self.idle(defaults.setting("POLL_S"))
        finally:
            self.shutdown()

    def idle(self, period: float) -> None:
        """Wait up to ``period``, waking early when a job process exits or a job is submitted
        (queue.submit touches the wake file): cheap checks every WAKE_S instead of SQL."""
        deadline = time.monotonic() + period
        wake = queue_wake_file(self.home)
        seen = _mtime(wake)
        while time.monotonic() < deadline and not self.stopping:
            if any(r.ended() for r in self.running.values()) or _mtime(wake) != seen:
                return
            time.sleep(WAKE_S)

    def _on_signal(self, signum, frame):
        self.stopping = True

    def _guard(self, what: str, fn, *args, job_id: int | None = None) -> None:
        """Run ``fn``; an exception is logged (and fails job ``job_id`` when given), never raised."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - one job's trouble must not end the worker and its other jobs
            print(f"error in {what}: {type(e).__name__}: {e}\n{traceback.format_exc()}", flush=True)
            if job_id is not None:
                self.running.pop(job_id, None)
                try:
                    self.store.transition(job_id, JobState.FAILED, error_class=CRASH,
                                          error_message="the worker could not handle this job: "
                                          + (str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"))
                except Exception:  # noqa: BLE001 - already finished, or the store is down: the sweep sees it later
                    pass

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = procs.lock_workspace(self.home)      # raises AlreadyRunning
        become_subreaper()
        self._gpus = self.gpu_source()
        if self.executor is not None:
            self._guard(f"the {self.executor.NAME} executor", self.executor.warm)   # a cluster down now may be up later
        self.store.register_worker(self.id, os.getpid(), socket.gethostname(), self._resources())
        self.sweep_lost(startup=True)
        self.sweep_secrets()
        print(f"worker {self.id}: {len(self._gpus)} GPU(s), {self.cpu_slots} CPU slot(s), home {self.home}",
              flush=True)

    def shutdown(self) -> None:
        """Stop the jobs this worker runs (SIGTERM, then SIGKILL) and record them as cancelled by the operator:
        they can be retried (a worker that dies without this leaves them to the next one's lost sweep)."""
        for r in self.running.values():
            r.reason = "shutdown"
            self.signal(r, signal.SIGTERM)
        deadline = time.monotonic() + defaults.setting("CANCEL_GRACE_S")
        while not all(r.ended() for r in self.running.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for r in list(self.running.values()):
            self.signal(r, signal.SIGKILL)
            if r.proc is not None:
                r.proc.wait()
            self._guard(f"job {r.job_id}", self.finish, r)
        self.reap_orphans()
        self.store.remove_worker(self.id)

    def _resources(self) -> dict:
        return {"gpus": [g.__dict__ for g in self._gpus], "cpu_slots": self.cpu_slots}

    # -- one pass of the loop ---------------------------------------------------------------
    def tick(self) -> None:
        for r in list(self.running.values()):
            if r.ended():
                self._guard(f"job {r.job_id}", self.finish, r, job_id=r.job_id)
        self.enforce()
        now = time.monotonic()
        if now - self._beat >= defaults.HEARTBEAT_S:
            self._beat = now
            self._gpus = self.gpu_source()
            self.store.worker_heartbeat(self.id, self._resources())
            self.store.heartbeat_jobs(list(self.running))
            for r in self.running.values():
                self._guard(f"job {r.job_id}'s log", logs.cap_log, job_dir(r.job_id, self.home) / "run.log")
            self.sweep_lost()
            self.sweep_secrets()
            self.sweep_endpoints()
            self.reap_orphans()
        if not self.stopping:
            self.schedule()

    def enforce(self) -> None:
        """Cancel requests and timeouts: SIGTERM to the group, SIGKILL after the grace period."""
        grace = defaults.setting("CANCEL_GRACE_S")
        flagged = {j.id for j in self.store.active() if j.cancel_requested}
        for r in self.running.values():
            now = time.monotonic()
            if r.remote is not None and r.pid == 0 and r.remote.poll().phase == "running":
                self._running_remote(r)
            if r.term_sent is None:
                if r.job_id in flagged:
                    r.reason = CANCELLED
                elif r.timeout_s and now - r.started > r.timeout_s and r.pid != 0:
                    r.reason = TIMEOUT
                if r.reason:
                    r.term_sent = now
                    self.signal(r, signal.SIGTERM)
            elif now - r.term_sent > grace:
                self.signal(r, signal.SIGKILL)

    @staticmethod
    def signal(r: Running, sig: int) -> None:
        """Signal a job's process group, unless its pid now names another process (an adopted job's pid
        can be reused once it ends; a child's cannot before we reap it). A cluster's job: its cancel stages."""
        if r.remote is not None:
            r.remote.stop(force=sig == signal.SIGKILL)
        elif r.proc is not None or procs.same(r.ident) != "other":
            kill_group(r.pid, sig)

    def reap_orphans(self) -> None:
        """Children that are not a job's process: zombies are reaped; live ones outside every running
        job's session (each job leads its own) are killed, and reaped on a later pass."""
        jobs = {r.pid for r in self.running.values()}
        for pid, (state, session) in children().items():
            if pid in jobs:
                continue
            try:
                if state != "Z" and session not in jobs:
                    os.kill(pid, signal.SIGKILL)
                    print(f"stopped pid {pid}, left behind by a finished job", flush=True)
                os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass

    def sweep_lost(self, startup: bool = False) -> None:
        """Jobs active in the store that no live worker runs: adopt those whose process still lives,
        record those that ended meanwhile from their result.json, mark the rest lost."""
        live = {w["id"] for w in self.store.workers()
                if w["id"] == self.id or (pid_alive(w["pid"]) and w["host"] == socket.gethostname()
                                          and queue.worker_fresh(w))}
        for job in self.store.active():
            if job.id in self.running:
                continue
            stale = time.time() - (job.heartbeat_at or job.started_at or 0) > defaults.setting("LOST_AFTER_S")
            if job.worker_id in live and not stale:
                continue
            self._guard(f"job {job.id}", self.recover, job)

    def recover(self, job: Job) -> None:
        ident = procs.recorded(job_dir(job.id, self.home))
        if ident and ident.get("executor"):
            self.recover_remote(job, ident)
            return
        ident = ident if job.pid else None
        now = procs.same(ident)
        if now == "alive":
            self.adopt(job, ident)
            return
        if now == "gone" and ident:
            kill_group(ident["pid"], signal.SIGKILL)     # what is left of its group (its id is not reusable while it lives)
        if ident and logs.result(job.id, self.home) is not None:
            print(f"job {job.id}: ended while no worker watched it", flush=True)
            self.record_end(job.id, None, None, 0, ident)
            return
        self.store.transition(job.id, JobState.LOST, error_class=LOST,
                              error_message="the worker running this job stopped or died")
        print(f"job {job.id}: lost (its worker is gone" + (", its pid is another process now)" if now == "other" else ")"),
              flush=True)

    def recover_remote(self, job, ident: dict) -> None:
        """A job a dead worker launched on a cluster: watch it again while the cluster runs it, else record its end."""
        handle = executors.attach(ident)
        status = handle.poll()
        if not status.ended:
            self.adopt(job, ident, handle)
            return
        print(f"job {job.id}: ended on {ident['executor']} while no worker watched it", flush=True)
        self.record_end(job.id, status.exit_code, None, 0, None, status.verdict)

    def adopt(self, job: Job, ident: dict, remote: executors.Handle | None = None) -> None:
        """Watch a job whose worker died but whose process lives: its cancel, timeout and end are ours now."""
        since = time.time() - (job.started_at or time.time())
        pid = ident["pid"] if remote is None else (-1 if job.state == JobState.RUNNING else 0)
        self.running[job.id] = Running(job.id, pid, time.monotonic() - max(0.0, since),
                                          self._timeout(job), ident=ident, remote=remote,
                                          result=job_dir(job.id, self.home) / "result.json")
        self.store.update_job(job.id, worker_id=self.id, heartbeat_at=time.time())
        print(f"job {job.id}: adopted ({ident['executor']} job {ident['id']} still there)" if remote else
              f"job {job.id}: adopted (pid {ident['pid']} still running)", flush=True)

    def sweep_secrets(self) -> None:
        """Secrets of jobs that ended without launching (cancelled while queued from anywhere, lost...)."""
        for path in (self.home / "jobs").glob(f"*/{job_env.SECRETS_FILE}"):
            job = self.store.job(int(path.parent.name)) if path.parent.name.isdigit() else None
            if job is not None and job.finished:      # no row yet: a submit in progress
                job_env.discard(path.parent)

    def sweep_endpoints(self) -> None:
        """Endpoints whose serving job ended without removing them (it was killed first)."""
        for e in self.store.items(RegistryType.ENDPOINT):
            job = self.store.job(e.job_id) if e.job_id else None
            if job is None or job.finished:
                self.store.delete(RegistryType.ENDPOINT, e.name, job_id=e.job_id)

    def schedule(self) -> None:
        cap, caps = defaults.setting("USER_MAX_RUNNING"), queue.running_caps(self.home)
        light_cap = defaults.setting("USER_MAX_LIGHT_RUNNING")
        active, waiting = self.store.active(), self.store.queued()
        per_owner = Counter(j.owner for j in active)
        light = Counter(j.owner for j in active if not queue.heavy(j.asked))
        spent = queue.over_gpu_hours({j.owner for j in waiting if queue.heavy(j.asked)}, self.home)
        for job in queue.consider_order(waiting, active, queue.recent_usage(self.home)):
            owner_cap = caps.get(job.owner, cap)
            if owner_cap and per_owner[job.owner] >= owner_cap:
                continue
            if queue.heavy(job.asked) and job.owner in spent:
                continue                  # GPU-hours used up today: it waits (new submits are refused)
            if not queue.heavy(job.asked) and light_cap and light[job.owner] >= light_cap:
                continue
            engine = job.asked.get("engine", "core")
            if not engines.installed(engine, self.home):
                if self._engine_install_pending(engine):
                    continue      # wait for the install job to finish
                self._fail_unplaced(job, MISSING_ENGINE,
                                    f"the {engine} engine is not installed: run an engine_install job for it first")
                continue
            try:
                given = (placement.place(job.asked, self._gpus, active, self.cpu_slots) if self.executor is None
                         else placement.on_cluster(job.asked, self.executor.NAME))
                if given is not None and self.executor is None:
                    given["host"] = socket.gethostname()       # where it runs (a cluster's job: its id and node)
            except placement.NeverFits as e:
                self._fail_unplaced(job, BAD_INPUT, str(e))
                continue
            if given is None or not self.store.claim(job.id, self.id, given):
                continue
            job = self.store.job(job.id)
            self._guard(f"job {job.id}", self.launch, job, job_id=job.id)
            active.append(job)
            per_owner[job.owner] += 1
            light[job.owner] += not queue.heavy(job.asked)

    def _engine_install_pending(self, engine: str) -> bool:
        return any(j.spec.get("engine") == engine
                   for j in self.store.jobs(states=PENDING, kind="engine_install"))

    def _fail_unplaced(self, job: Job, error_class: str, message: str) -> None:
        if self.store.claim(job.id, self.id, {}):
            self.store.transition(job.id, JobState.FAILED, error_class=error_class, error_message=message)
            job_env.discard(job_dir(job.id, self.home))
            print(f"job {job.id}: failed before start: {message}", flush=True)

    # -- running one job --------------------------------------------------------------------
    def launch(self, job: Job) -> None:
        d = job_dir(job.id, self.home)
        d.mkdir(parents=True, exist_ok=True)
        (d / "artifacts").mkdir(exist_ok=True)
        spec_path = d / "spec.json"
        spec_path.write_text(json.dumps(job.spec, ensure_ascii=False, indent=2), encoding="utf-8")
        kind = kinds.get(job.kind)
        try:
            secrets = job_env.take_secrets(d)
        except job_env.BadSecrets as e:
            self.store.transition(job.id, JobState.FAILED, error_class=BAD_INPUT,
                                  error_message=f"the job could not start: {e}; submit it again")
            print(f"job {job.id}: failed before start: {e}", flush=True)
            return
        env = job_env.environment(
            os.environ, d, secrets, PYTHONUNBUFFERED="1", WORKBENCH_HOME=str(self.home), WORKBENCH_JOB_ID=str(job.id),
            WORKBENCH_AUTH=defaults.setting("AUTH"),
            WORKBENCH_CORE_PYTHON=str(engines.python("core", self.home)),   # an engine's job may run a core step (GGUF)        # not a secret: the sandbox's bare mode is for AUTH=none only
            PYTHONPATH=os.pathsep.join(filter(None, [str(defaults.ROOT), os.environ.get("PYTHONPATH")])),
            CUDA_VISIBLE_DEVICES=",".join(map(str, job.given.get("gpus", []))))
        cmd = [str(engines.python(job.asked.get("engine", "core"), self.home)), "-m", kind.module, str(spec_path)]
        if self.executor is not None:
            self.launch_remote(job, d, cmd, env)
            return
        log = open(d / "run.log", "ab")
        try:
            proc = subprocess.Popen(cmd, cwd=defaults.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.close()
            job_env.discard(d)
            self.store.transition(job.id, JobState.FAILED, error_class=MISSING_ENGINE,
                                  error_message=f"could not start {cmd[0]}: {e}")
            return
        cgroup = defaults.setting("JOB_CGROUP")
        try:
            if cgroup:
                procs.place(proc.pid, cgroup)
        except OSError as e:
            print(f"job {job.id}: could not put it in the cgroup {cgroup} (WORKBENCH_JOB_CGROUP): {e}", flush=True)
        counter = procs.oom_counter(proc.pid)
        ident = {**procs.identity(proc.pid), "oom_counter": counter, "oom_kills": procs.oom_kills(counter)}
        self.running[job.id] = Running(job.id, proc.pid, time.monotonic(), self._timeout(job), proc=proc,
                                          ident=ident, log=log)
        procs.record(d, ident)
        self.store.transition(job.id, JobState.RUNNING, pid=proc.pid)
        print(f"job {job.id} ({job.kind}): running as pid {proc.pid} on {job.given}", flush=True)

    def launch_remote(self, job, d: Path, cmd: list[str], env: dict) -> None:
        """Submit the job to the cluster; it stays starting until the cluster runs it (the node's scheduler
        chooses its GPUs: CUDA_VISIBLE_DEVICES is the cluster's to set)."""
        env.pop("CUDA_VISIBLE_DEVICES", None)
        executors.base.write_launch(d, cmd, env, defaults.ROOT)
        try:
            handle = self.executor.submit(job.id, d, executors.base.launch_command(cmd[0], d), job.asked,
                                          self._timeout(job), defaults.setting("CANCEL_GRACE_S"))
        except Exception:
            (d / "launch.json").unlink(missing_ok=True)        # it holds the job's secrets
            raise
        procs.record(d, handle.ident)
        self.store.update_job(job.id, given={**job.given, "id": handle.ident["id"]})
        self.running[job.id] = Running(job.id, 0, time.monotonic(), self._timeout(job), ident=handle.ident,
                                          remote=handle, result=d / "result.json")
        print(f"job {job.id} ({job.kind}): submitted as {handle.executor} job {handle.ident['id']}", flush=True)

    def _running_remote(self, r: Running) -> None:
        r.pid, r.started = -1, time.monotonic()       # -1: running on the cluster (0: waiting there)
        given = self.store.job(r.job_id).given or {}
        self.store.transition(r.job_id, JobState.RUNNING, started_at=time.time(),     # not when it was submitted
                              given={**given, "node": r.remote.poll().node or "?"})
        print(f"job {r.job_id}: running on {r.remote.executor} job {r.remote.ident['id']}", flush=True)

    @staticmethod
    def _timeout(job: Job) -> float:
        timeout = job.asked.get("timeout_s")
        if timeout is None:
            timeout = defaults.setting("JOB_TIMEOUT_S")
        return float(timeout or 0)

    def finish(self, r: Running) -> None:
        self.running.pop(r.job_id, None)
        if r.remote is not None:
            job_env.discard(job_dir(r.job_id, self.home))
            (job_dir(r.job_id, self.home) / "launch.json").unlink(missing_ok=True)     # never launched
            status = r.remote.poll()
            if r.pid == 0 and logs.result(r.job_id, self.home) is not None:
                self._running_remote(r)          # it ran and ended between two polls: it was running
            self.record_end(r.job_id, status.exit_code, r.reason, r.timeout_s, None, status.verdict)
            return
        code = r.proc.wait() if r.proc is not None else None      # an adopted job's exit status is not ours to read
        if r.log is not None:
            r.log.close()
        self.signal(r, signal.SIGKILL)     # children the job left behind
        job_env.discard(job_dir(r.job_id, self.home))
        self.reap_orphans()
        self.record_end(r.job_id, code, r.reason, r.timeout_s, r.ident)

    def record_end(self, job_id: int, code: int | None, reason: str | None, timeout_s: float, ident: dict | None,
                   verdict: tuple | None = None) -> None:
        """Record how a job ended: what it wrote in result.json first (a job that exits 0 as a cancel
        lands succeeded), then why the worker stopped it, then how a cluster ended it (``verdict``: state,
        class, message naming the cluster's state), then its exit and log."""
        logs.cap_log(job_dir(job_id, self.home) / "run.log")
        result = logs.result(job_id, self.home)
        if code is None:          # adopted, or ended while no worker watched: only its result says
            ok = result is not None and result.get("ok", True)
        else:
            ok = code == EXIT_OK and (result is None or result.get("ok", True))
        if ok:
            state, fields = JobState.SUCCEEDED, {}
        elif reason == CANCELLED:
            state, fields = JobState.CANCELLED, {"error_class": CANCELLED, "error_message": "cancelled by user"}
        elif reason == TIMEOUT:
            state, fields = JobState.FAILED, {"error_class": TIMEOUT,
                                              "error_message": f"timed out after {timeout_s:.0f} s"}
        elif verdict is not None:
            state, fields = verdict[0], {"error_class": verdict[1], "error_message": verdict[2]}
        elif reason == "shutdown":
            state, fields = JobState.CANCELLED, {"error_class": CANCELLED, "error_message": SHUTDOWN_MESSAGE}
        else:
            oom = None
            if code in (-signal.SIGKILL, None) and ident:
                oom = procs.killed_by_oom(ident)
            cls, msg = errors.classify(code, result, logs.tail(job_id, 40, home=self.home), oom)
            state, fields = JobState.FAILED, {"error_class": cls, "error_message": msg}
        self.store.transition(job_id, state, exit_code=code, **fields)
        print(f"job {job_id}: {state.value} (exit {code})", flush=True)


SHUTDOWN_MESSAGE = "stopped with the workbench by the operator: retry it once the workbench runs again"


def main(burst: bool = False) -> None:
    Worker(defaults.home(), burst=burst).run()
