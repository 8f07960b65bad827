"""Reading a job's run.log and events.jsonl by byte offset: the cost does not grow with the file."""
from __future__ import annotations

import json
from pathlib import Path

from backend.core import defaults
from backend.core.paths import job_dir


def read_log(job_id: int, offset: int = 0, max_bytes: int = defaults.LOG_TAIL_BYTES, *, home: Path) -> tuple[str, int]:
    """Text of run.log from ``offset`` (at most ``max_bytes``, the newest if there is more), and the
    offset to pass next time. Undecodable bytes are shown as replacement characters."""
    path = job_dir(job_id, home) / "run.log"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < offset:      # truncated or replaced: start again
                offset = 0
            start = max(offset, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", offset
    if start > offset and b"\n" in data:   # skipped ahead: begin at a line boundary
        data = data[data.index(b"\n") + 1:]
    return data.decode("utf-8", errors="replace"), size


DROPPED = b"\n[... %d bytes of this log were dropped here to keep it under WORKBENCH_LOG_MAX_MB ...]\n"


def cap_log(path: Path, max_bytes: int | None = None) -> bool:
    """Keep a growing log under ``max_bytes`` (default WORKBENCH_LOG_MAX_MB) in place: past it, keep its
    first quarter and newest half, dropping the oldest middle with a marker line. The job keeps appending
    (O_APPEND) meanwhile; bytes it writes between the last read here and the truncate are lost."""
    if max_bytes is None:
        max_bytes = int(defaults.setting("LOG_MAX_MB") * 1024 * 1024)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if not max_bytes or size <= max_bytes:
        return False
    with open(path, "r+b") as f:
        head = f.read(max_bytes // 4)
        head = head[:head.rfind(b"\n") + 1] or head
        start = size - max_bytes // 2
        f.seek(start)
        tail = f.read()
        while more := f.read():            # what the job appended while we read
            tail += more
        cut = tail.find(b"\n") + 1
        marker = DROPPED % (start + cut - len(head))
        f.seek(len(head))
        f.write(marker + tail[cut:])
        f.truncate()
    return True


def chunks(job_id: int, offset: int = 0, size: int = 1 << 20, *, home: Path):
    """(bytes, next offset) pieces of run.log from ``offset`` to its current end, ``size`` at a time: a
    reader that streams, never holding the whole log. After the log was capped (it shrank under
    ``offset``), it goes on from the drop marker."""
    try:
        f = open(job_dir(job_id, home) / "run.log", "rb")
    except FileNotFoundError:
        return
    with f:
        if f.seek(0, 2) < offset:
            f.seek(0)
            head = f.read(int(defaults.setting("LOG_MAX_MB") * 1024 * 1024) // 4 + len(DROPPED) + 20)
            offset = max(0, head.rfind(DROPPED.split(b"%")[0]))
        f.seek(offset)
        while data := f.read(size):
            offset += len(data)
            yield data, offset


def tail(job_id: int, lines: int = 20, *, home: Path) -> str:
    text, _ = read_log(job_id, 0, max_bytes=16 * 1024, home=home)
    return "\n".join(text.splitlines()[-lines:])


def read_events(job_id: int, offset: int = 0, max_bytes: int = 4 * 1024 * 1024, *, home: Path) -> tuple[list[dict], int]:
    """Complete event lines from ``offset``; a partly written last line waits for the next call."""
    path = job_dir(job_id, home) / "events.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def result(job_id: int, home: Path) -> dict | None:
    try:
        return json.loads((job_dir(job_id, home) / "result.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


SERIES_KEEP = 500           # points a metric series keeps at least (at most twice this), evenly thinned


class Series:
    """One metric's (step, value) points, bounded however long the run: past 2 * SERIES_KEEP points every
    other one is dropped and from then on only every ``stride``-th new one kept, so the points stay evenly
    spread over the run; the latest is always kept."""

    def __init__(self):
        self.points: list[tuple[float, float]] = []
        self.stride, self.seen = 1, 0
        self.last: tuple[float, float] | None = None

    def add(self, step: float, value: float) -> None:
        if self.last is not None and self.last[0] == step:       # the same step again: its last value counts
            self.last = (step, value)
            if self.points and self.points[-1][0] == step:
                self.points[-1] = self.last
            return
        self.last = (step, value)
        if self.seen % self.stride == 0:
            self.points.append(self.last)
            if len(self.points) >= 2 * SERIES_KEEP:
                del self.points[1::2]
                self.stride *= 2
        self.seen += 1

    def view(self) -> list[tuple[float, float]]:
        """The points by step (the last value of each step), the latest included."""
        return sorted(dict(self.points + ([self.last] if self.last else [])).items())


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


STEP_TYPES = ("model", "tool", "answer")    # an agent's steps (jobs/agent.py), in the order they happened
COMPLETIONS_KEPT = 20                       # a GRPO job's latest sampled-completion tables a viewer keeps


class EventState:
    """What a viewer keeps between refreshes: the offset, the latest progress, each metric's points (bounded:
    Series), the last messages, the steps."""

    def __init__(self):
        self.offset = 0
        self.progress: dict | None = None
        self.first_progress: dict | None = None
        self.series: dict[str, Series] = {}
        self.messages: list[dict] = []
        self.steps: list[dict] = []
        self.completions: list[dict] = []       # GRPO: {"step", "rows": [{prompt, completion, rewards, reward}]}

    def update(self, job_id: int, home: Path) -> "EventState":
        events, self.offset = read_events(job_id, self.offset, home=home)
        for e in events:
            t = e.get("type")
            if t == "progress":
                self.progress = e
                if self.first_progress is None:
                    self.first_progress = e
            elif t == "metric" and _number(step := e.get("step")):
                for k, v in e.items():
                    if k not in ("t", "type", "step") and _number(v):
                        self.series.setdefault(k, Series()).add(step, v)
            elif t == "message":
                self.messages.append(e)
            elif t in STEP_TYPES:
                self.steps.append(e)
            elif t == "completions":
                self.completions.append(e)
        del self.messages[:-200]
        del self.completions[:-COMPLETIONS_KEPT]
        return self

    def eta_s(self) -> float | None:
        return eta_s(self.progress, self.first_progress)


def eta_s(p: dict | None, p0: dict | None) -> float | None:
    """Seconds left, from the rate between the first (``p0``) and the latest (``p``) progress event."""
    if not p or not p0 or not p.get("total") or p["t"] <= p0["t"] or p["done"] <= p0["done"]:
        return None
    rate = (p["done"] - p0["done"]) / (p["t"] - p0["t"])
    return max(0.0, (p["total"] - p["done"]) / rate)
