"""A job's events (progress, metrics, messages, steps, GRPO's sampled answers) as charts and views read them:
parsed from events.jsonl once for every session that shows the job, each new byte once, a big backlog over a few
polls, each metric series thinned to what a chart draws."""
from __future__ import annotations

import threading
from pathlib import Path

from backend.runtime import logs
from backend.core.paths import job_dir

CHART_POINTS = 400                  # most points per metric series sent to a chart
CATCH_UP_BYTES = 32 * 1024 * 1024   # most events.jsonl one poll parses (a long backlog takes a few polls)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Events:
    """A job's events parsed up to ``size`` bytes of events.jsonl; shared, so treat it as read-only."""

    def __init__(self, size: int = 0, progress=None, first_progress=None, series=None, messages=(), steps=(),
                 completions=()):
        self.size, self.progress, self.first_progress = size, progress, first_progress
        self.series: dict[str, list[tuple[float, float]]] = {name: _thin(points) for name, points in (series or {}).items()}
        self.messages: tuple[dict, ...] = tuple(messages)
        self.steps: tuple[dict, ...] = tuple(steps)
        self.completions: tuple[dict, ...] = tuple(completions)     # GRPO's sampled answers, the latest steps

    def eta_s(self) -> float | None:
        return logs.eta_s(self.progress, self.first_progress)



def _thin(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most CHART_POINTS of a series' points, evenly kept, the latest among them."""
    stride = -(-len(pts) // CHART_POINTS)
    return pts[::-stride][::-1] if stride > 1 else pts


class _Parsed:
    """One job's events as parsed so far; grows by the new bytes only."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state = logs.EventState()
        self.snapshot = Events()


_cache: dict[Path, _Parsed] = {}
_cache_lock = threading.Lock()


def events(job_id: int, size: int | None = None, *, home: Path) -> Events:
    """The job's parsed events at events.jsonl's ``size`` (default: now): parsed once for every session,
    each new byte once."""
    path = job_dir(job_id, home) / "events.jsonl"
    size = _size(path) if size is None else size
    with _cache_lock:
        parsed = _cache.setdefault(path, _Parsed())
    with parsed.lock:
        st = parsed.state
        if size < st.offset and _size(path) < st.offset:      # a new file in its place: parse it again
            st = parsed.state = logs.EventState()
            parsed.snapshot = Events()
        if size > st.offset:
            start = st.offset
            while st.offset < size and st.offset - start < CATCH_UP_BYTES:     # a big backlog: over a few polls
                before = st.offset
                st.update(job_id, home=home)
                if st.offset == before:
                    break
            parsed.snapshot = Events(st.offset, st.progress, st.first_progress,
                                     {name: s.view() for name, s in st.series.items()}, st.messages[-20:], st.steps,
                                     st.completions)
        return parsed.snapshot
