"""Who may stop a job: its owner, an instructor, or the operator's shell (real store, real CLI)."""
import pytest

from backend.access import users
from backend.runtime import queue
from backend.core.store import open_store
from tests.conftest import cli


def test_only_the_owner_or_an_instructor_stops_a_job(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", " teacher , 老师 ")
    a, b, c = (queue.submit("sleepy", {"steps": 1}, owner="ann", home=home) for _ in range(3))
    with pytest.raises(queue.SubmitError, match="belongs to ann: only they or an instructor"):
        queue.cancel(a, by="bob", home=home)
    assert queue.get(a, home=home, by=users.OPERATOR).state == "queued" and not queue.get(a, home=home, by=users.OPERATOR).cancel_requested
    assert queue.cancel(a, by="ann", home=home).state == "cancelled"
    assert queue.cancel(b, by="老师", home=home).state == "cancelled"
    assert queue.instructors() == {"teacher", "老师"}
    out = cli(home, "cancel", str(c), WORKBENCH_USER="bob")        # the command line is the operator's
    assert out.returncode == 0 and queue.get(c, home=home, by=users.OPERATOR).state == "cancelled", out.stderr
    monkeypatch.delenv("WORKBENCH_INSTRUCTORS")
    assert not queue.may_manage(queue.get(c, home=home, by=users.OPERATOR), "teacher", home=home) and queue.may_manage(queue.get(c, home=home, by=users.OPERATOR), users.OPERATOR, home=home)


def test_place_in_queue_follows_priority_fair_share_and_age_and_run_next_is_an_instructors(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", "teacher")
    ann1, ann2, bob = (queue.submit("sleepy", {"steps": 1}, owner=o, home=home) for o in ("ann", "ann", "bob"))
    assert [queue.place_in_queue(j, home=home) for j in (ann1, ann2, bob)] == [1, 2, 3]        # age
    with pytest.raises(queue.SubmitError, match="only an instructor"):
        queue.run_next(ann2, by="ann", home=home)
    queue.run_next(ann2, by="teacher", home=home)
    assert [queue.place_in_queue(j, home=home) for j in (ann1, ann2, bob)] == [2, 1, 3]
    out = cli(home, "next", str(bob))                   # the operator's shell
    assert out.stdout.strip() == f"job {bob}: place 1 in the queue", out.stderr
    assert [queue.place_in_queue(j, home=home) for j in (ann1, ann2, bob)] == [3, 2, 1]
    queue.cancel(ann1, home=home, by=users.OPERATOR)
    assert queue.place_in_queue(ann1, home=home) is None
    out = cli(home, "next", str(ann1))
    assert out.returncode == 2 and f"job {ann1} is cancelled, not queued" in out.stderr and "Traceback" not in out.stderr


def test_fair_share_puts_who_runs_nothing_first(home):
    ann1, ann2, bob = (queue.submit("sleepy", {"steps": 1}, owner=o, home=home) for o in ("ann", "ann", "bob"))
    store = open_store(home)                            # ann runs a job, bob none: bob goes first
    running = store.insert_job("sleepy", "ann", {}, {})
    store.claim(running, "w1", {})
    assert [j.id for j in queue.consider_order(store.queued(), store.active())] == [bob, ann1, ann2]


def test_jobs_page_is_paged_and_filtered_in_the_store(home, monkeypatch):
    store = open_store(home)
    ids = [store.insert_job("sleepy", "ann" if i % 3 else "bob", {}, {}) for i in range(120)]
    jobs, total = queue.jobs_page(2, 50, home=home, by=users.OPERATOR)
    assert total == 120 and [j.id for j in jobs] == ids[::-1][50:100]
    jobs, total = queue.jobs_page(99, 50, owner="bob", home=home, by=users.OPERATOR)            # past the end: the last page
    assert total == 40 and [j.id for j in jobs] == [i for k, i in enumerate(ids) if k % 3 == 0][::-1]
    queue.cancel(ids[0], home=home, by=users.OPERATOR)
    assert queue.jobs_page(1, 50, states=["cancelled"], home=home, by=users.OPERATOR) == ([queue.get(ids[0], home=home, by=users.OPERATOR)], 1)
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")              # a student sees their own jobs only
    jobs, total = queue.jobs_page(1, 50, by="bob", home=home)
    assert total == 40 and {j.owner for j in jobs} == {"bob"}
