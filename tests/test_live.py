"""Live views: a viewer reads a job's files only when they changed, and the events' parse is shared."""
import sys

from backend.runtime import events, live, queue
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


VIEW_RSS = """
import sys
from pathlib import Path
from backend.runtime import events, live, logs

def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024

job, home = int(sys.argv[1]), Path(sys.argv[2])
size = (home / 'jobs' / str(job) / 'events.jsonl').stat().st_size
base = rss('VmRSS:')
view = live.Viewer(job, home)
polls = 0
while view.events.size < size and polls < 100:
    view.poll()
    view._sig = None                  # the page's next refresh
    polls += 1
series = events.events(job, home=home).series
print(len(series['loss']), series['loss'][-1][0], polls, len(view.text), repr(view.text[-30:]))
print((rss('VmHWM:') - base) // 2**20)
"""


def test_a_2gb_log_and_a_long_metric_stream_are_viewed_in_bounded_memory(home):
    """A run whose run.log is 2 GB and whose events hold 600,000 metric points: the app's view of it (the log's
    tail, every metric series for the charts) grows the viewing process by less than 100 MB."""
    import subprocess
    from tests.conftest import ROOT, env_for
    job = queue.submit("sleepy", {"steps": 2, "interval_s": 0}, home=home, owner="local")
    assert run_burst(home).returncode == 0
    d = home / "jobs" / str(job)
    with open(d / "run.log", "r+b") as f:
        f.truncate(2 * 2**30)                          # a sparse 2 GB of log (no disk), then real lines
        f.seek(0, 2)
        f.write(b"".join(b"line %d of the long log\n" % i for i in range(1000)))
    n = 600_000
    with open(d / "events.jsonl", "a") as f:
        for lo in range(0, n, 50_000):
            f.write("".join(f'{{"t": {i}.5, "type": "metric", "step": {i}, "loss": {1 / (i + 1):.6f}, '
                            f'"lr": 0.0001, "grad_norm": 1.25}}\n' for i in range(lo, lo + 50_000)))
    out = subprocess.run([sys.executable, "-c", VIEW_RSS, str(job), str(home)], cwd=ROOT, env=env_for(home),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, grown = out.stdout.splitlines()
    points, last_step, polls, kept, tail = first.split(" ", 4)
    assert int(points) <= events.CHART_POINTS and int(last_step) == n - 1, first
    assert "line 999 of the long log" in tail and int(kept) <= live.LOG_KEEP_CHARS
    assert int(grown) < 100, f"viewing grew the process by {grown} MB"
