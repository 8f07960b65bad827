"""Jobs page with 10,000 jobs: one page from SQL (LIMIT/OFFSET + COUNT, filters in WHERE) against loading
every job (what paging in pandas needs). Prints milliseconds and the ratio measured in this run.

    .venv/bin/python bench/jobs_page.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its queue.py and datasets.py would shadow real modules
os.environ.update(WORKBENCH_HOME=tempfile.mkdtemp(prefix="wb-bench-"))

from backend.access import users
from backend.core import defaults
from backend.runtime import queue
from backend.core.store import open_store

N = 10_000


def ms(fn, repeat: int = 20) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def main() -> None:
    store = open_store(home=defaults.home())
    spec = {"steps": 5, "interval_s": 0.1, "note": "x" * 200}
    for i in range(N):
        store.insert_job("sleepy", f"user{i % 30}", spec, {"cpu_slots": 1}, label=f"run {i}")
    everything = ms(lambda: queue.list_jobs(limit=N, home=defaults.home(), by=users.OPERATOR), 3)
    for what, kw in [("page 1", {}), ("page 100", {"page": 100}), ("owner filter, page 3", {"page": 3, "owner": "user7"}),
                     ("state filter", {"states": ["queued"]})]:
        page = ms(lambda kw=kw: queue.jobs_page(per_page=50, home=defaults.home(), by=users.OPERATOR, **kw))
        print(f"{N} jobs, {what:22}: {page:6.2f} ms a page; all rows {everything:7.1f} ms; ×{everything / page:.0f} faster")


if __name__ == "__main__":
    main()
