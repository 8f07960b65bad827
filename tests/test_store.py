"""The store: schema, checked transitions, atomic claim, concurrent writers."""
import multiprocessing
import sqlite3

import pytest

from backend.core.states import InvalidTransition, JobState
from backend.core.store import MIGRATIONS, Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "wb.db")


def test_schema_is_versioned_and_wal(store, tmp_path):
    assert store.version == len(MIGRATIONS)
    con = sqlite3.connect(tmp_path / "wb.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    Store(tmp_path / "wb.db")            # opening again migrates nothing and loses nothing
    assert store.version == len(MIGRATIONS)


def test_transitions_are_checked(store):
    job = store.insert_job("sleepy", "ann", {"steps": 1}, {"cpu_slots": 1})
    with pytest.raises(InvalidTransition):
        store.transition(job, JobState.SUCCEEDED)            # queued cannot jump to succeeded
    assert store.claim(job, "w1", {"cpu_slots": 1})
    store.transition(job, JobState.RUNNING, pid=123)
    done = store.transition(job, JobState.SUCCEEDED, exit_code=0)
    assert done.state == "succeeded" and done.finished_at and done.exit_code == 0
    with pytest.raises(InvalidTransition):
        store.transition(job, JobState.RUNNING)              # finished is final


def test_lost_is_final_and_every_state_change_is_checked(store):
    job = store.insert_job("sleepy", "ann", {}, {})
    store.claim(job, "w1", {"cpu_slots": 1})
    store.transition(job, JobState.RUNNING, pid=1)
    store.transition(job, JobState.LOST, error_class="lost")
    with pytest.raises(InvalidTransition):
        store.transition(job, JobState.QUEUED)               # Retry queues a new job instead
    assert store.claim(job, "w2", {}) is False                # claim only takes a queued job
    assert store.request_cancel(job).state == "lost"       # cancel never rewrites a finished job
    with pytest.raises(ValueError):                          # not an assert: holds under python -O too
        store.update_job(job, state="queued")


def test_claim_is_atomic(store):
    job = store.insert_job("sleepy", "ann", {}, {})
    assert store.claim(job, "w1", {}) is True
    assert store.claim(job, "w2", {}) is False
    assert store.job(job).worker_id == "w1"


def test_cancel_queued_ends_at_once_running_is_flagged(store):
    a = store.insert_job("sleepy", "ann", {}, {})
    b = store.insert_job("sleepy", "ann", {}, {})
    assert store.request_cancel(a).state == "cancelled"
    store.claim(b, "w1", {})
    store.transition(b, JobState.RUNNING, pid=1)
    flagged = store.request_cancel(b)
    assert flagged.state == "running" and flagged.cancel_requested == 1


def test_queued_order_priority_then_age(store):
    a = store.insert_job("k", "ann", {}, {})
    b = store.insert_job("k", "bob", {}, {}, priority=5)
    c = store.insert_job("k", "cid", {}, {})
    assert [j.id for j in store.queued()] == [b, a, c]


def test_registry_put_get_update_delete(store):
    store.put("model", "m1", "/x", {"params": 1}, owner="local")
    store.put("model", "m1", "/y", {"params": 2}, owner="local")
    assert store.get("model", "m1").meta == {"params": 2}
    assert [m.name for m in store.items("model")] == ["m1"]
    assert store.delete("model", "m1") and store.get("model", "m1") is None


def test_delete_with_job_id_removes_only_what_that_job_owns(store):
    store.put("endpoint", "e", meta={}, job_id=2, owner="local")          # job 2 took the name over from job 1
    assert store.delete("endpoint", "e", job_id=1) is False and store.get("endpoint", "e")
    assert store.delete("endpoint", "e", job_id=2) is True and store.get("endpoint", "e") is None


def _hammer(path, n):
    s = Store(path)
    for i in range(n):
        j = s.insert_job("k", "p", {"i": i}, {})
        s.claim(j, "w", {})
        s.update_job(j, heartbeat_at=1.0)


def test_concurrent_writers_never_see_locked(tmp_path):
    path = tmp_path / "wb.db"
    Store(path)
    procs = [multiprocessing.Process(target=_hammer, args=(path, 60)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(Store(path).jobs(limit=1000)) == 240


def test_no_job_is_claimed_while_an_exclusive_check_and_act_runs(store):
    """A model's re-download checks that no running job uses it, then swaps its folder: a worker (here a thread
    with its own connection, as a worker is) cannot claim a job between the two."""
    import threading
    job = store.insert_job("sleepy", "ann", {"steps": 1}, {"cpu_slots": 1})
    inside, release, claimed = threading.Event(), threading.Event(), threading.Event()

    def check_and_act():
        inside.set()
        release.wait(30)
        return [j.id for j in store.jobs(states=[JobState.STARTING])]    # what the check sees, still inside
    seen = []
    holder = threading.Thread(target=lambda: seen.append(store.exclusive(check_and_act)))
    holder.start()
    assert inside.wait(30)
    worker = threading.Thread(target=lambda: store.claim(job, "w1", {}) and claimed.set())
    worker.start()
    assert not claimed.wait(1.0)          # the claim waits on the lock (a bound on how long it may wrongly run)
    release.set()
    holder.join(30)
    worker.join(30)
    assert seen == [[]] and claimed.is_set() and store.job(job).state == JobState.STARTING
