"""Fair-share simulation: 30 students on one simulated 80 GB GPU, in simulated time, through the worker's own
ordering (backend.runtime.queue.consider_order) and placement (backend.placement.place). One student submits ten
fine-tunes at once; everybody else works through the lab: fine-tune, then evaluate, then serve and chat.

Prints each policy's waits against the class's fair share (the median student's mean wait under that policy):
age only (FIFO), running jobs only (before), running jobs then recent use (now). Goal: nobody waits more than
2x the fair share, and the GPU is never over-committed.

    .venv/bin/python bench/fairshare.py
"""
from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)   # not bench/ (its queue.py)

from backend.core import defaults
from backend.runtime import placement, queue  # noqa: E402

GPU_GB = 80.0
STUDENTS = 30
MIX = [("finetune", 20.0, 20 * 60), ("evaluate", 16.0, 10 * 60), ("serve", 18.0, 15 * 60)]   # kind, GB, seconds


def arrivals(rng: random.Random) -> list[dict]:
    """The first step of each student (the rest follow when the step before ends), plus the greedy student's ten."""
    jobs = [{"owner": f"s{i:02d}", "step": 0, "submit": rng.uniform(0, 600)} for i in range(1, STUDENTS)]
    jobs += [{"owner": "s00", "step": -1, "submit": 0.0} for _ in range(10)]     # ten fine-tunes, no follow-up
    return jobs


class SimJob(dict):
    """A simulated job: read by field name like the store's Job records (job.owner), and as a dict."""
    __getattr__ = dict.__getitem__


def simulate(order) -> tuple[dict[str, list[float]], float]:
    rng = random.Random(0)
    pending = sorted(arrivals(rng), key=lambda j: j["submit"])
    gpu = [placement.GPU(0, "simulated", GPU_GB, 0.0)]
    queued, active, done, waits, peak, t, next_id = [], [], [], {}, 0.0, 0.0, 1
    while pending or queued or active:
        while pending and pending[0]["submit"] <= t:
            j = pending.pop(0)
            kind, gb, secs = MIX[max(j["step"], 0)]
            queued.append(SimJob(j, id=next_id, priority=0, kind=kind, secs=secs,
                                 asked={"gpus": 1, "gpu_mem_gb": gb}))
            next_id += 1
        for j in order(queued, active, done, t):
            given = placement.place(j["asked"], gpu, active, 0)
            if given:
                queued.remove(j)
                active.append(SimJob(j, given=given, start=t, end=t + j["secs"]))
                waits.setdefault(j["owner"], []).append(t - j["submit"])
        peak = max(peak, sum(a["given"]["gpu_mem_gb"] for a in active))
        t = min([a["end"] for a in active] + [p["submit"] for p in pending[:1]])
        for a in [a for a in active if a["end"] <= t]:
            active.remove(a)
            done.append(a)
            if 0 <= a["step"] < len(MIX) - 1:
                pending.append({"owner": a["owner"], "step": a["step"] + 1, "submit": t})
        pending.sort(key=lambda j: j["submit"])
    return waits, peak


def usage(jobs: list[dict], t: float) -> dict[str, float]:
    """What store.usage_since gives the worker: seconds each owner's jobs ran in the last window."""
    since, out = t - defaults.FAIR_SHARE_WINDOW_S, {}
    for j in jobs:
        ran = min(j["end"], t) - max(j["start"], since)
        if ran > 0:
            out[j["owner"]] = out.get(j["owner"], 0.0) + ran
    return out


POLICIES = {
    "age only (FIFO)": lambda q, a, d, t: sorted(q, key=lambda j: j["id"]),
    "running jobs (before)": lambda q, a, d, t: queue.consider_order(q, a),
    "running + recent use (now)": lambda q, a, d, t: queue.consider_order(q, a, usage(d + a, t)),
}


def main() -> None:
    print(f"{STUDENTS} students, one {GPU_GB:.0f} GB GPU; s00 submits 10 fine-tunes at once")
    rows = {}
    for name, policy in POLICIES.items():
        waits, peak = simulate(policy)
        means = {o: statistics.mean(w) for o, w in waits.items()}
        fair = statistics.median(means.values())
        worst = max((o for o in means if o != "s00"), key=means.get)
        first = statistics.mean(w[0] for o, w in waits.items() if o != "s00")      # others' fine-tune
        rows[name] = (fair, worst, means[worst] / fair, means["s00"] / fair, first, peak)
        assert peak <= GPU_GB - placement.GPU_HEADROOM_GB, f"{name}: GPU over-committed ({peak} GB)"
    print(f"{'policy':<28} {'fair share':>10}  {'worst other student':>20}  {'greedy s00':>10}  "
          f"{'others first step':>17}  {'peak GB':>7}")
    base = rows["age only (FIFO)"][4]
    for name, (fair, worst, ratio, greedy, first, peak) in rows.items():
        print(f"{name:<28} {fair / 60:>8.1f} m  {worst:>5} {ratio:>6.2f}x fair  {greedy:>8.2f}x  "
              f"{first / base:>10.2f}x FIFO  {peak:>7.1f}")
    print("goal: every student other than the greedy one within 2.00x of the fair share")


if __name__ == "__main__":
    main()
