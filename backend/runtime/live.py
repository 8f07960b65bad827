"""Live views that cost nothing while nothing changes.

A viewer (one per browser session and job) asks ``Viewer.poll()`` each refresh. The poll looks at the
job's row and the sizes of run.log and events.jsonl (a stat, no read); only when one of them moved does
it read: the new bytes of run.log (its own offset), and the job's parsed events from a cache shared by
every session (one parse per job and events.jsonl size). ``interval()`` says how often to poll: often
while a job runs and its files move, less while it is queued or quiet, never once it has finished.
"""
from __future__ import annotations

import time
from pathlib import Path

from backend.access import users
from backend.runtime import logs, queue
from backend.runtime.events import Events, _size, events
from backend.core.job import Job
from backend.core.paths import job_dir
from backend.core.states import JobState

LOG_KEEP_CHARS = 64 * 1024          # what a viewer keeps of the log: the refresh cost stays constant
POLL_LIVE_S = 1.5                   # a running job whose files moved in the last IDLE_AFTER_S (a new line shows within 2 s)
POLL_QUIET_S = 3.0                  # a queued job, or a running one that has been quiet that long
IDLE_AFTER_S = 20.0
POLL_LIST_S = 3.0                   # a list of jobs with one that may change
POLL_LIST_IDLE_S = 10.0             # a list of finished jobs (it changes when somebody submits)
CHART_EVERY_S = 5.0                 # charts redraw at most this often while a job runs
# row fields a view shows: a heartbeat alone is no change
_SHOWN = ("state", "given", "priority", "exit_code", "error_class", "error_message", "cancel_requested", "pid",
          "started_at", "finished_at")


def interval(state: str, quiet_s: float = 0.0) -> float | None:
    """Seconds between polls of a job view; None once the job has finished (nothing will change)."""
    s = JobState(state)
    if s.finished:
        return None
    if s is JobState.QUEUED or quiet_s >= IDLE_AFTER_S:
        return POLL_QUIET_S
    return POLL_LIVE_S


def list_interval(jobs: list[Job]) -> float:
    """Seconds between refreshes of a list of jobs: slower when all of them have finished."""
    return POLL_LIST_S if any(not JobState(j.state).finished for j in jobs) else POLL_LIST_IDLE_S


def _shown(job: Job) -> tuple:
    return tuple(str(getattr(job, k)) for k in _SHOWN)


class Viewer:
    """What one session keeps of one job: its row, the log text it has shown, the events it has seen."""

    def __init__(self, job_id: int, home: Path):
        self.job_id, self.home = job_id, home
        self.job: Job | None = None
        self.offset, self.text = 0, ""
        self.events = Events()
        self.result: dict | None = None
        self.place: int | None = None
        self.changed_at = time.monotonic()
        self._sig: tuple | None = None

    def poll(self) -> bool:
        """Bring the view up to date; True when anything it shows changed since the last poll."""
        job = queue.get(self.job_id, self.home, by=users.OPERATOR)     # the page asked queue.get with its user first
        d = job_dir(self.job_id, self.home)
        log_size, events_size = _size(d / "run.log"), _size(d / "events.jsonl")
        place = queue.place_in_queue(self.job_id, self.home) if job.state == JobState.QUEUED.value else None
        sig = (_shown(job), place, log_size, events_size)
        self.job = job
        if sig == self._sig:
            return False
        if log_size != self.offset:
            if log_size < self.offset:                  # a new log in its place
                self.text = ""
            text, self.offset = logs.read_log(self.job_id, self.offset, home=self.home)
            self.text = (self.text + text)[-LOG_KEEP_CHARS:]
        if events_size != self.events.size:
            self.events = events(self.job_id, events_size, home=self.home)
        if JobState(job.state).finished and self.result is None:
            self.result = logs.result(self.job_id, self.home)
        self.place, self._sig, self.changed_at = place, sig, time.monotonic()
        return True

    def quiet_s(self) -> float:
        return time.monotonic() - self.changed_at

    def interval(self) -> float | None:
        return interval(self.job.state, self.quiet_s()) if self.job else POLL_LIVE_S
