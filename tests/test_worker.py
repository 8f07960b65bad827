"""The worker daemon as a real subprocess: runs, cancels (two stages), times out, survives its own death."""
import json
import os
import signal

from backend import logs, paths, queue
from backend.store import open_store
from tests.conftest import run_burst, start_worker, stop, wait_for


def state(job_id):
    return queue.get(job_id)["state"]


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
    a = queue.submit("sleepy", {"steps": 2, "interval_s": 0})
    b = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "fail": True})
    out = run_burst(home)
    assert out.returncode == 0, out.stdout + out.stderr
    ja, jb = queue.get(a), queue.get(b)
    assert ja["state"] == "succeeded" and ja["exit_code"] == 0 and ja["started_at"] <= jb["started_at"]
    assert jb["state"] == "failed" and jb["error_class"] == "bad_input" and "asked to fail" in jb["error_message"]
    assert logs.result(a)["steps"] == 2
    text, _ = logs.read_log(a)
    assert "step 2 of 2" in text
    events, _ = logs.read_events(a)
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2]


def test_cancel_running_job_kills_its_whole_group(home, worker):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05, "child": True})
    wait_for(lambda: state(job) == "running" and (paths.job_dir(job) / "child.pid").exists(), 30, what="job running")
    pid = queue.get(job)["pid"]
    child = int((paths.job_dir(job) / "child.pid").read_text())
    queue.cancel(job)
    wait_for(lambda: state(job) == "cancelled", 30, what="cancelled")
    wait_for(lambda: gone(pid) and gone(child), 10, what="process group gone")
    assert queue.get(job)["error_class"] == "cancelled"


def test_what_a_job_leaves_behind_is_stopped_and_reaped(home, worker):
    """A process the job started in a session of its own escapes the group kill: the worker, as subreaper,
    inherits it when the job ends, stops it and reaps it (no zombie)."""
    job = queue.submit("sleepy", {"steps": 3, "escape": True})
    wait_for(lambda: state(job) == "succeeded", 30, what="the job to end")
    escaped = int((paths.job_dir(job) / "escaped.pid").read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{escaped}"), 15, what="the escaped process stopped and reaped")
    assert "left behind by a finished job" in (home / "worker.log").read_text()


def test_sigterm_ignored_then_sigkill(home, worker):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05, "ignore_sigterm": True})
    wait_for(lambda: "step 3" in logs.read_log(job)[0], 30, what="job printing")
    queue.cancel(job)
    wait_for(lambda: state(job) == "cancelled", 30, what="cancelled after SIGKILL")
    assert queue.get(job)["exit_code"] == -signal.SIGKILL


def test_timeout_fails_the_job(home):
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05})
    run_burst(home, WORKBENCH_JOB_TIMEOUT_S=1)
    j = queue.get(job)
    assert j["state"] == "failed" and j["error_class"] == "timeout"


def test_worker_killed_job_is_lost_on_restart_and_its_process_stopped(home):
    w = start_worker(home)
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05})
    wait_for(lambda: state(job) == "running", 30, what="running")
    pid = queue.get(job)["pid"]
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    assert state(job) == "running"          # nobody knows yet
    w2 = start_worker(home)
    try:
        wait_for(lambda: state(job) == "lost", 30, what="lost")
        wait_for(lambda: gone(pid), 10, what="orphan killed")
    finally:
        stop(w2)
    assert queue.retry(job) > job


def test_graceful_worker_stop_ends_jobs_as_lost(home):
    w = start_worker(home)
    job = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05})
    wait_for(lambda: state(job) == "running", 30, what="running")
    stop(w)
    assert state(job) == "lost"
    assert open_store().workers() == []


def test_cpu_slots_limit_concurrency(home, worker):
    a = queue.submit("sleepy", {"steps": 1000, "interval_s": 0.05})
    b = queue.submit("sleepy", {"steps": 1, "interval_s": 0})
    wait_for(lambda: state(a) == "running", 30, what="a running")
    assert state(b) == "queued"          # one CPU slot by default
    queue.cancel(a)
    wait_for(lambda: state(b) == "succeeded", 30, what="b ran after a")


def test_missing_engine_fails_with_clear_message(home, monkeypatch):
    store = open_store()
    job = store.insert_job("sleepy", "ann", {}, {"cpu_slots": 1, "engine": "lmdeploy"})
    run_burst(home)
    j = queue.get(job)
    assert j["state"] == "failed" and j["error_class"] == "missing_engine" and "engine_install" in j["error_message"]


def test_non_utf8_log_is_shown_not_a_crash(home):
    job = queue.submit("sleepy", {"steps": 1, "interval_s": 0, "bad_bytes": True})
    run_burst(home)
    text, _ = logs.read_log(job)
    assert "bad bytes: \ufffd" in text and "end" in text


def test_secrets_reach_the_job_env_only(home):
    job = queue.submit("sleepy", {"steps": 1, "interval_s": 0}, secrets={"HF_TOKEN": "hf_secret_123"})
    assert (paths.job_dir(job) / "secrets.json").stat().st_mode & 0o777 == 0o600
    run_burst(home)
    assert not (paths.job_dir(job) / "secrets.json").exists()
    assert "hf_secret_123" not in json.dumps(queue.get(job).as_dict())
    assert "hf_secret_123" not in (paths.job_dir(job) / "spec.json").read_text()
