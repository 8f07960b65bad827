"""The worker daemon as a real subprocess: runs, cancels (two stages), times out, survives its own death."""
import json
import os
import signal
import subprocess
import sys

from backend.access import users
from backend.core import defaults, errors, paths
from backend.runtime import logs, procs, queue
from backend.core.store import open_store
from tests.conftest import ROOT, cli, env_for, run_burst, start_worker, stop, wait_for


def state(job_id):
    return queue.get(job_id, home=defaults.home(), by=users.OPERATOR).state


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is gone for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_burst_runs_jobs_in_order_and_records_results(home):
    a = queue.submit("sleepy", {"steps": 2, "interval_s": 0}, home=home, owner="local")
    b = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "fail": True}, home=home, owner="local")
    out = run_burst(home)
    assert out.returncode == 0, out.stdout + out.stderr
    ja, jb = queue.get(a, home=home, by=users.OPERATOR), queue.get(b, home=home, by=users.OPERATOR)
    assert ja.state == "succeeded" and ja.exit_code == 0 and ja.started_at <= jb.started_at
    assert jb.state == "failed" and jb.error_class == "bad_input" and "asked to fail" in jb.error_message
    assert logs.result(a, home=home)["steps"] == 2
    text, _ = logs.read_log(a, home=home)
    assert "step 2 of 2" in text
    events, _ = logs.read_events(a, home=home)
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2]


def test_cancel_running_job_kills_its_whole_group(home, worker):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05, "child": True}, home=home, owner="local")
    wait_for(lambda: state(job) == "running" and (paths.job_dir(job, home=home) / "child.pid").exists(), 30, what="job running")
    pid = queue.get(job, home=home, by=users.OPERATOR).pid
    child = int((paths.job_dir(job, home=home) / "child.pid").read_text())
    queue.cancel(job, home=home, by=users.OPERATOR)
    wait_for(lambda: state(job) == "cancelled", 30, what="cancelled")
    wait_for(lambda: gone(pid) and gone(child), 10, what="process group gone")
    assert queue.get(job, home=home, by=users.OPERATOR).error_class == "cancelled"


def test_what_a_job_leaves_behind_is_stopped_and_reaped(home, worker):
    """A process the job started in a session of its own escapes the group kill: the worker, as subreaper,
    inherits it when the job ends, stops it and reaps it (no zombie)."""
    job = queue.submit("sleepy", {"steps": 3, "escape": True}, home=home, owner="local")
    wait_for(lambda: state(job) == "succeeded", 30, what="the job to end")
    escaped = int((paths.job_dir(job, home=home) / "escaped.pid").read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{escaped}"), 15, what="the escaped process stopped and reaped")
    assert "left behind by a finished job" in (home / "worker.log").read_text()


def test_sigterm_ignored_then_sigkill(home, worker):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05, "ignore_sigterm": True}, home=home, owner="local")
    wait_for(lambda: "step 3" in logs.read_log(job, home=home)[0], 30, what="job printing")
    queue.cancel(job, home=home, by=users.OPERATOR)
    wait_for(lambda: state(job) == "cancelled", 30, what="cancelled after SIGKILL")
    assert queue.get(job, home=home, by=users.OPERATOR).exit_code == -signal.SIGKILL


def test_timeout_fails_the_job(home):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05}, home=home, owner="local")
    run_burst(home, WORKBENCH_JOB_TIMEOUT_S=1)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and j.error_class == "timeout"


def test_job_whose_process_died_with_its_worker_is_lost_and_its_group_stopped(home):
    w = start_worker(home)
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05, "child": True}, home=home, owner="local")
    wait_for(lambda: state(job) == "running" and (paths.job_dir(job, home=home) / "child.pid").exists(), 30, what="running")
    pid = queue.get(job, home=home, by=users.OPERATOR).pid
    child = int((paths.job_dir(job, home=home) / "child.pid").read_text())
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    os.kill(pid, signal.SIGKILL)             # the job's own process dies too; its child lives on in the group
    wait_for(lambda: gone(pid), 10, what="the job process gone")
    assert state(job) == "running"          # nobody knows yet
    w2 = start_worker(home)
    try:
        wait_for(lambda: state(job) == "lost", 30, what="lost")
        wait_for(lambda: gone(child), 10, what="what was left of its group killed")
    finally:
        stop(w2)
    assert queue.retry(job, home=home, by=users.OPERATOR) > job


def job_under_killed_worker(home, **spec) -> tuple[int, int]:
    """A sleepy job running under a worker that is then SIGKILLed: (job id, job pid)."""
    w = start_worker(home)
    job = queue.submit("sleepy", spec, home=home, owner="local")
    wait_for(lambda: state(job) == "running", 30, what="running")
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    return job, queue.get(job, home=home, by=users.OPERATOR).pid


def test_restarted_worker_adopts_a_live_job_and_enforces_its_cancel(home):
    """SIGKILL the worker mid-job: the new worker adopts the job (same pid and start time), does not
    kill it, and still stops it on cancel."""
    job, pid = job_under_killed_worker(home, steps=1000, interval_s=0.05)
    w2 = start_worker(home)
    try:
        new_id = wait_for(lambda: [x["id"] for x in open_store(home=home).workers() if x["pid"] == w2.pid], 30, what="w2 registered")[0]
        wait_for(lambda: queue.get(job, home=home, by=users.OPERATOR).worker_id == new_id, 30, what="the job adopted")
        assert state(job) == "running" and not gone(pid)
        lines = logs.read_log(job, home=home)[0].count("\n")
        wait_for(lambda: logs.read_log(job, home=home)[0].count("\n") > lines + 5, 30, what="the adopted job still printing")
        queue.cancel(job, home=home, by=users.OPERATOR)
        wait_for(lambda: state(job) == "cancelled", 30, what="the adopted job cancelled")
        wait_for(lambda: gone(pid), 10, what="its process stopped")
    finally:
        stop(w2)
    assert "adopted" in (home / "worker.log").read_text()


def test_adopted_job_that_ends_is_recorded_from_its_result(home):
    job, _ = job_under_killed_worker(home, steps=40, interval_s=0.1)
    w2 = start_worker(home)
    try:
        wait_for(lambda: state(job) != "running", 60, what="the adopted job to end")
    finally:
        stop(w2)
    assert state(job) == "succeeded" and logs.result(job, home=home)["steps"] == 40


def test_job_that_finished_while_no_worker_ran_is_recorded_not_lost(home):
    job, pid = job_under_killed_worker(home, steps=10, interval_s=0.1)
    wait_for(lambda: gone(pid) and logs.result(job, home=home), 30, what="the job to end on its own")
    w2 = start_worker(home)
    try:
        wait_for(lambda: state(job) != "running", 30, what="the job recorded")
    finally:
        stop(w2)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "succeeded", j


def test_lost_sweep_does_not_kill_a_reused_pid(home):
    """The store says a dead worker's job runs as pid P, but P is now another process (pid reuse after a
    reboot): the job is lost and P is left alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        store = open_store(home=home)
        job = store.insert_job("sleepy", "ann", {}, {"cpu_slots": 1})
        store.claim(job, "dead-worker", {})
        store.transition(job, "running", pid=other.pid, heartbeat_at=0)
        paths.job_dir(job, home=home).mkdir(parents=True)
        procs.record(paths.job_dir(job, home=home), {"pid": other.pid, "start": 1, "boot": procs.boot_id()})
        run_burst(home)
        assert state(job) == "lost"
        assert other.poll() is None, "the sweep killed a process that is not the job's"
    finally:
        other.kill()
        other.wait()


def test_second_worker_on_a_workspace_refuses(home, worker):
    wait_for(lambda: open_store(home=home).workers(), 30, what="the first worker registered")
    out = run_burst(home)
    assert out.returncode == 2 and "another worker" in out.stderr and "Traceback" not in out.stderr
    assert len(open_store(home=home).workers()) == 1


def test_an_error_handling_one_job_fails_that_job_not_the_worker(home):
    store = open_store(home=home)
    bad = store.insert_job("no_such_kind", "ann", {}, {"cpu_slots": 1})
    good = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, home=home, owner="local")
    out = run_burst(home)
    assert out.returncode == 0, out.stdout + out.stderr
    assert state(bad) == "failed" and "no_such_kind" in queue.get(bad, home=home, by=users.OPERATOR).error_message
    assert state(good) == "succeeded"


def test_cancel_landing_as_the_job_exits_0_records_succeeded(home, worker):
    """The job ignores SIGTERM and ends well before the grace period: it succeeded, whatever was asked."""
    job = queue.submit("sleepy", {"steps": 15, "interval_s": 0.1, "ignore_sigterm": True}, home=home, owner="local")
    wait_for(lambda: "step 3" in logs.read_log(job, home=home)[0], 30, what="job printing")
    queue.cancel(job, home=home, by=users.OPERATOR)
    wait_for(lambda: state(job) not in ("running", "starting"), 30, what="the job to end")
    assert state(job) == "succeeded" and queue.get(job, home=home, by=users.OPERATOR).exit_code == 0


def test_sigkill_from_outside_is_killed_not_out_of_memory(home, worker):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05}, home=home, owner="local")
    wait_for(lambda: state(job) == "running", 30, what="running")
    os.kill(queue.get(job, home=home, by=users.OPERATOR).pid, signal.SIGKILL)
    wait_for(lambda: state(job) == "failed", 30, what="failed")
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.error_class == "killed" and "SIGKILL" in j.error_message, j


def test_sigkill_is_out_of_memory_only_when_the_kernel_says_so():
    assert errors.classify(-9, None, "", oom=True)[0] == "out_of_memory"
    assert errors.classify(-9, None, "", oom=False)[0] == "killed"
    assert errors.classify(-9, None, "", oom=None)[0] == "killed"


def test_run_log_is_capped_keeping_its_start_and_end(home):
    job = queue.submit("sleepy", {"steps": 3, "interval_s": 0, "log_bytes": 3_000_000}, home=home, owner="local")
    run_burst(home, WORKBENCH_LOG_MAX_MB=1)
    assert state(job) == "succeeded"
    data = (paths.job_dir(job, home=home) / "run.log").read_bytes()
    assert len(data) <= 1024 * 1024 and b"bytes of this log were dropped" in data
    assert data.endswith(b"step 3 of 3\n")
    out = cli(home, "logs", str(job))
    assert out.returncode == 0 and out.stdout.endswith("step 3 of 3\n") and "dropped" in out.stdout


def test_a_job_that_prints_without_end_keeps_its_log_under_the_cap(home):
    w = start_worker(home, WORKBENCH_LOG_MAX_MB=1)
    try:
        job = queue.submit("sleepy", {"steps": 100000, "interval_s": 0.05, "log_per_step": 20000}, home=home, owner="local")
        log = paths.job_dir(job, home=home) / "run.log"
        wait_for(lambda: state(job) == "running" and b"were dropped" in log.read_bytes(), 60, what="the log capped while running")
        wait_for(lambda: "step 300 " in logs.read_log(job, home=home)[0], 120, what="more steps")
        assert state(job) == "running" and log.stat().st_size < 3 * 1024 * 1024          # 6 MB written
        assert log.read_bytes().startswith(b"yyy")
    finally:
        stop(w)


def test_full_disk_is_disk_full_with_a_suggestion(home):
    job = queue.submit("sleepy", {"steps": 1, "write_to": "/dev/full"}, home=home, owner="local")
    run_burst(home)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and j.error_class == "disk_full", j
    assert errors.SUGGESTIONS["disk_full"] == "err.disk_full"


def test_corrupt_database_gives_one_sentence(home):
    (home / "workbench.db").write_bytes(b"this is not a database" * 100)
    for args in (["list"], ["worker", "--burst"]):
        out = cli(home, *args)
        assert out.returncode == 2 and "cannot be read" in out.stderr and "Traceback" not in out.stderr, out.stderr
    app = subprocess.run([sys.executable, "-m", "pages", "--server.port", "9"], cwd=ROOT, env=env_for(home),
                         capture_output=True, text=True, timeout=60)
    assert app.returncode == 1 and "cannot be read" in app.stderr and "Traceback" not in app.stderr, app.stderr


def test_graceful_worker_stop_ends_jobs_as_cancelled_by_the_operator(home):
    """Stopping ./workbench up (SIGTERM to the worker) cancels its running jobs and says so; Retry works."""
    w = start_worker(home)
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05}, home=home, owner="local")
    wait_for(lambda: state(job) == "running", 30, what="running")
    stop(w)
    row = open_store(home=home).job(job)
    assert row.state == "cancelled" and "stopped with the workbench by the operator" in row.error_message
    assert open_store(home=home).workers() == []
    assert queue.retry(job, home=home, by=users.OPERATOR) != job


def test_cpu_slots_limit_concurrency(home, worker):
    a = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05}, home=home, owner="local")
    b = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, home=home, owner="local")
    wait_for(lambda: state(a) == "running", 30, what="a running")
    assert state(b) == "queued"          # one CPU slot by default
    queue.cancel(a, home=home, by=users.OPERATOR)
    wait_for(lambda: state(b) == "succeeded", 30, what="b ran after a")


def test_missing_engine_fails_with_clear_message(home, monkeypatch):
    store = open_store(home=home)
    job = store.insert_job("sleepy", "ann", {}, {"cpu_slots": 1, "engine": "lmdeploy"})
    run_burst(home)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and j.error_class == "missing_engine" and "engine_install" in j.error_message


def test_non_utf8_log_is_shown_not_a_crash(home):
    job = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "bad_bytes": True}, home=home, owner="local")
    run_burst(home)
    text, _ = logs.read_log(job, home=home)
    assert "bad bytes: \ufffd" in text and "end" in text


def test_secrets_reach_the_job_env_only(home):
    job = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, secrets={"HF_TOKEN": "hf_secret_123"}, home=home, owner="local")
    assert (paths.job_dir(job, home=home) / "secrets.json").stat().st_mode & 0o777 == 0o600
    run_burst(home)
    assert not (paths.job_dir(job, home=home) / "secrets.json").exists()
    assert "hf_secret_123" not in json.dumps(queue.get(job, home=home, by=users.OPERATOR).as_dict())
    assert "hf_secret_123" not in (paths.job_dir(job, home=home) / "spec.json").read_text()


def test_the_worker_sweeps_endpoints_whose_job_ended(home):
    """A server killed before it could remove its endpoint: pages never list it, and the worker's sweep
    (not a page reading) removes it."""
    from backend.pipeline import chat
    store = open_store(home)
    dead = store.insert_job("sleepy", "ann", {}, {})
    store.request_cancel(dead)                                   # ended (cancelled while queued)
    store.put("endpoint", "stale", "/nowhere", {"url": "http://127.0.0.1:9/v1"}, job_id=dead, owner="local")
    assert chat.live_endpoints(home, by=users.OPERATOR) == [] and store.get("endpoint", "stale") is not None
    run_burst(home)
    assert store.get("endpoint", "stale") is None
