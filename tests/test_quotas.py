"""Per-person caps that hold under a burst of submits: running light jobs (agent, download, stats, imports)
are capped (the next one waits, through the real worker), and GPU-hours count the jobs already waiting, so
twenty GPU jobs submitted with 0.01 h left are not all accepted."""
from __future__ import annotations

import time

import pytest

from backend.access import users
from backend.core import defaults
from backend.runtime import placement, queue
from backend.core.store import open_store
from tests.conftest import start_worker, stop, wait_for


def test_light_jobs_past_the_cap_wait(home):
    assert defaults.SETTINGS["USER_MAX_LIGHT_RUNNING"].default == 20
    light = {"light": True, "steps": 400, "interval_s": 0.05}
    ann = [queue.submit("sleepy", light, owner="ann", home=home) for _ in range(3)]
    bob = queue.submit("sleepy", light, owner="bob", home=home)
    worker = start_worker(home, WORKBENCH_USER_MAX_LIGHT_RUNNING="2")
    try:
        wait_for(lambda: all(queue.get(j, home, by=users.OPERATOR).state == "running" for j in [*ann[:2], bob]), 60, 0.1,
                 "two of ann's light jobs and bob's to run")
        assert queue.get(ann[2], home, by=users.OPERATOR).state == "queued"             # ann's third waits for one of hers
        queue.cancel(ann[0], home=home, by=users.OPERATOR)
        wait_for(lambda: queue.get(ann[2], home, by=users.OPERATOR).state == "running", 60, 0.1, "ann's third to start")
    finally:
        for j in [*ann, bob]:
            queue.cancel(j, home=home, by=users.OPERATOR)
        stop(worker)


def test_waiting_jobs_count_against_gpu_hours(home, monkeypatch, local_noon):
    monkeypatch.setenv("WORKBENCH_USER_GPU_HOURS_PER_DAY", "0.1")
    store, now = open_store(home), time.time()
    ran = queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)                    # 0.09 h of one CPU slot
    assert store.claim(ran, "w", placement.place({"cpu_slots": 1}, [], [], 1))
    store.update_job(ran, started_at=now - 324)
    store.transition(ran, "running")
    store.transition(ran, "succeeded", finished_at=now)
    accepted, refused = [], []
    for _ in range(20):
        try:
            accepted.append(queue.submit("sleepy", {"steps": 1}, owner="ann", home=home))
        except queue.SubmitError as e:
            refused.append(e)
    assert len(accepted) == 1 and len(refused) == 19
    assert "your 1 waiting job(s) count as 0.25 more" in str(refused[0]) and "GPU" in refused[0].text("zh")
    assert queue.submit("sleepy", {"steps": 1, "light": True}, owner="ann", home=home)    # light jobs still go
    assert queue.submit("sleepy", {"steps": 1}, owner="bob", home=home)
    # once the day's hours are used up, the worker starts none of her waiting jobs (bob's still run)
    assert queue.over_gpu_hours({"ann", "bob"}, home) == set()
    store.update_job(ran, started_at=now - 400)
    assert queue.over_gpu_hours({"ann", "bob"}, home) == {"ann"}
    with pytest.raises(queue.SubmitError, match=r"you have used 0\.11 of your 0\.1 GPU-hours"):
        queue.submit("sleepy", {"steps": 1}, owner="ann", home=home)
