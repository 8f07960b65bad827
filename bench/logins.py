"""Login benchmark: what 50 logins at once cost the app process, against one login in the same process.

Each login verifies an argon2id hash (argon2-cffi's defaults: 64 MiB, 3 passes, 4 lanes). The app answers
logins on Starlette's thread pool (40 threads), so 50 students pressing Login together used to hash up to
40 at once: 40 x 64 MiB. users._HASHING lets PASSWORD_HASHES_AT_ONCE (one per core) hash together; the
others wait their turn. For each of "bounded" (as shipped) and "unbounded" (the semaphore widened to 50, as
before), a fresh process logs one account in once (its latency: the baseline), then 50 accounts at once,
and reports each login's latency and the process's peak RSS growth (VmHWM - VmRSS before).

    .venv/bin/python bench/logins.py [--n 50]
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[0] = str(HERE)              # not bench/ itself: its queue.py would shadow the standard library's

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402


def rss(field: str) -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1]) * 1024


def one_run(home: Path, n: int, unbounded: bool) -> dict:
    import os
    os.environ["WORKBENCH_HOME"], os.environ["WORKBENCH_AUTH"] = str(home), "accounts"
    from backend.access import users
    if unbounded:
        users._HASHING = threading.BoundedSemaphore(n)
    names = [f"s{i}" for i in range(n)]
    for name in names:                                  # the accounts (not timed)
        users.add(name, "student", password="pw-" + name, home=home)
    t0 = time.perf_counter()
    users.login(names[0], "pw-" + names[0], "127.0.0.1", home=home)
    one = time.perf_counter() - t0
    base = rss("VmRSS:")
    gate = threading.Barrier(n)

    def login(name):
        gate.wait()
        t = time.perf_counter()
        users.login(name, "pw-" + name, "127.0.0.1", home=home)
        return time.perf_counter() - t

    with ThreadPoolExecutor(n) as pool:
        lat = sorted(pool.map(login, names))
    return {"one_s": one, "p50_s": statistics.median(lat), "max_s": lat[-1], "grown_mb": (rss("VmHWM:") - base) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--child", choices=["bounded", "unbounded"])
    ap.add_argument("--home")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one_run(Path(a.home), a.n, a.child == "unbounded")))
        return
    from backend.core import defaults
    print(f"{a.n} logins at once; PASSWORD_HASHES_AT_ONCE = {defaults.PASSWORD_HASHES_AT_ONCE}")
    for mode in ("bounded", "unbounded"):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--home", tmp, "--n", str(a.n)],
                                 capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        print(f"{mode:>9}: one login {r['one_s']:.2f} s; {a.n} at once: median {r['p50_s']:.2f} s "
              f"({r['p50_s'] / r['one_s']:.1f}x one), slowest {r['max_s']:.2f} s ({r['max_s'] / r['one_s']:.1f}x); "
              f"peak RSS +{r['grown_mb']:.0f} MB ({r['grown_mb'] / 64:.1f} hashes' worth)")


if __name__ == "__main__":
    main()
