"""Live views: a viewer reads a job's files only when they changed, and the events' parse is shared."""
import sys

from backend import live, queue
from tests.conftest import run_burst, wait_for

_opened: list[str] = []
_counting = {"on": False}


def _hook(event, args):          # an audit hook counts every open() of the job's files: no patching
    if _counting["on"] and event == "open" and isinstance(args[0], str) and "/jobs/" in args[0]:
        _opened.append(args[0])


sys.addaudithook(_hook)


def opened(fn):
    _opened.clear()
    _counting["on"] = True
    try:
        out = fn()
    finally:
        _counting["on"] = False
    return out, [p.rsplit("/", 1)[-1] for p in _opened]


def test_a_viewer_of_an_unchanged_job_reads_its_files_once_and_sessions_share_the_events(home):
    job = queue.submit("sleepy", {"steps": 5, "interval_s": 0}, home=home, owner="local")
    assert run_burst(home).returncode == 0
    first = live.Viewer(job, home)
    changed, files = opened(first.poll)
    assert changed and "run.log" in files and "events.jsonl" in files
    assert "step 5 of 5" in first.text and first.events.progress["done"] == 5
    assert list(first.events.series["loss"]) == [(s, 1.0 / s) for s in range(1, 6)]
    for _ in range(5):                                   # nothing changed: no reads at all
        changed, files = opened(first.poll)
        assert not changed and files == []
    assert first.interval() is None                      # finished: the page stops polling
    second = live.Viewer(job, home)                            # another session: its own log, the shared events
    changed, files = opened(second.poll)
    assert changed and "events.jsonl" not in files and second.events is first.events


def test_a_viewer_follows_a_running_job_by_its_new_bytes(home, worker):
    job = queue.submit("sleepy", {"steps": 30, "interval_s": 0.1}, home=home, owner="local")
    view = live.Viewer(job, home)
    view.poll()
    assert view.interval() in (live.POLL_LIVE_S, live.POLL_QUIET_S)
    wait_for(lambda: view.poll() and "step 3 of 30" in view.text, 30, 0.05, "step 3 in the view")
    assert view.interval() == live.POLL_LIVE_S
    offset = view.offset
    wait_for(lambda: view.poll() and view.events.progress["done"] >= 10, 30, 0.05, "progress 10")
    assert view.offset > offset and view.text.startswith("step 1 of 30")       # appended, not re-read
    wait_for(lambda: view.poll() and view.job.state == "succeeded", 30, 0.05, "the job to end")
    wait_for(lambda: view.poll() or view.result, 5, 0.05, "the result")
    assert "step 30 of 30" in view.text and view.result["steps"] == 30 and view.interval() is None
