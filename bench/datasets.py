"""Datasets benchmark: open a big chat JSONL with our line index vs pandas, count and search vs DuckDB.

    .venv/bin/python bench/datasets.py [--rows 1000000] [--dir /tmp/wb-bench-datasets]

Generates a chat JSONL (1M rows is about 1.3 GB) once, then runs every measurement in its own
subprocess (so each peak RSS is its own) and prints the ratios against the goals:
first page >= 20x faster than pandas.read_json(lines=True) with <= 1/10 of its peak RSS;
row count and search within 2x of the same raw DuckDB query.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDLE = "zebra-crossing-42"          # in every 1000th row

WORDS = ("the model learns from data and answers questions about language tokens training evaluation "
         "学习 数据 模型 回答 问题 书生 浦语 微调 评测 部署").split()


def generate(path: Path, rows: int) -> None:
    import random
    rnd = random.Random(0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(rows):
            user = " ".join(rnd.choices(WORDS, k=40))
            answer = " ".join(rnd.choices(WORDS, k=160)) + (f" {NEEDLE}" if i % 1000 == 7 else "")
            f.write(json.dumps({"id": i, "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question {i}: {user}"},
                {"role": "assistant", "content": answer}]}, ensure_ascii=False) + "\n")
    tmp.replace(path)


# -- measurements, each run in a fresh subprocess: prints {"s": seconds, "rss_mb": peak, ...} -----
def m_ours(path: str, cache: str) -> dict:
    from backend.workspace.dataset_view import open_view
    t = time.perf_counter()
    view = open_view(path, Path(cache))
    rows = view.page(0, 50)
    return {"s": time.perf_counter() - t, "built": view.built, "rows": len(rows), "total": len(view)}


def m_ours_count(path: str, cache: str) -> dict:
    from backend.workspace.dataset_view import open_view
    t = time.perf_counter()
    n = len(open_view(path, Path(cache)))
    return {"s": time.perf_counter() - t, "count": n}


def m_ours_search(path: str, cache: str) -> dict:
    from backend.workspace.dataset_view import open_view
    view = open_view(path, Path(cache))
    t = time.perf_counter()
    hits = view.search(NEEDLE)
    return {"s": time.perf_counter() - t, "count": len(hits)}


def m_pandas(path: str, cache: str) -> dict:
    import pandas as pd
    t = time.perf_counter()
    df = pd.read_json(path, lines=True)
    first = df.head(50)
    return {"s": time.perf_counter() - t, "rows": len(first), "total": len(df)}


def _duck(sql: str, path: str) -> dict:
    import duckdb
    con = duckdb.connect()
    t = time.perf_counter()
    n = con.execute(sql, [path]).fetchone()[0]
    return {"s": time.perf_counter() - t, "count": n}


def m_duck_count(path: str, cache: str) -> dict:
    return _duck("SELECT count(*) FROM read_json_auto(?, format='newline_delimited')", path)


def m_duck_search(path: str, cache: str) -> dict:
    return _duck(f"SELECT count(*) FROM read_json_auto(?, format='newline_delimited') "
                 f"WHERE CAST(messages AS VARCHAR) ILIKE '%{NEEDLE}%'", path)


def m_duck_search_lines(path: str, cache: str) -> dict:
    return _duck(f"SELECT count(*) FROM read_csv(?, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x01', "
                 f"quote='', escape='', max_line_size=100000000) WHERE line ILIKE '%{NEEDLE}%'", path)


def measure(name: str, path: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", name, "--file", str(path), "--cache", str(cache)],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/wb-bench-datasets")
    ap.add_argument("--skip-pandas", action="store_true", help="pandas needs ~7 GB for 1M rows")
    ap.add_argument("--measure")
    ap.add_argument("--file")
    ap.add_argument("--cache")
    args = ap.parse_args()
    if args.measure:
        sys.path.insert(0, str(ROOT))
        result = globals()["m_" + args.measure](args.file, args.cache)
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"chat-{args.rows}.jsonl"
    if not path.exists():
        t = time.perf_counter()
        generate(path, args.rows)
        print(f"generated {path} in {time.perf_counter() - t:.1f}s")
    size = path.stat().st_size
    print(f"file: {args.rows:,} rows, {size / 2**30:.2f} GiB")
    cache = d / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(["wc", "-l", str(path)], capture_output=True)
    wc = time.perf_counter() - t

    r = {"ours_cold": measure("ours", path, cache), "ours_warm": measure("ours", path, cache)}
    if not args.skip_pandas:
        r["pandas"] = measure("pandas", path, cache)
    for name in ("ours_count", "duck_count", "ours_search", "duck_search", "duck_search_lines"):
        r[name] = measure(name, path, cache)
    for k, v in r.items():
        print(f"  {k:18s} {json.dumps(v)}")
    print(f"  wc -l             {wc:.3f}s")

    def ratio(a, b, key="s"):
        return r[a][key] / r[b][key] if key in r.get(a, {}) and key in r.get(b, {}) and r[b][key] else float("nan")

    print("\nratios (goal):")
    print(f"  index build vs wc -l                    {r['ours_cold']['s'] / wc:8.2f}x slower")
    if "pandas" in r:
        print(f"  first page, index included: pandas/ours {ratio('pandas', 'ours_cold'):8.1f}x faster (>= 20)")
        print(f"  first page, index reused:   pandas/ours {ratio('pandas', 'ours_warm'):8.1f}x faster (>= 20)")
        print(f"  peak RSS, index build:      ours/pandas {ratio('ours_cold', 'pandas', 'rss_mb'):8.3f} (<= 0.1)")
        print(f"  peak RSS, index reused:     ours/pandas {ratio('ours_warm', 'pandas', 'rss_mb'):8.3f} (<= 0.1)")
    print(f"  count:  ours/duckdb (index reused)      {ratio('ours_count', 'duck_count'):8.3f} (<= 2)")
    print(f"  count:  ours index build/duckdb         {r['ours_cold']['s'] / r['duck_count']['s']:8.3f} (<= 2)"
          if "s" in r["duck_count"] else "")
    print(f"  search: ours/duckdb read_json_auto      {ratio('ours_search', 'duck_search'):8.3f} (<= 2)")
    print(f"  search: ours/duckdb raw lines           {ratio('ours_search', 'duck_search_lines'):8.3f} (<= 2)")
    same = {r[k].get("count") for k in ("ours_search", "duck_search", "duck_search_lines") if "count" in r[k]}
    print(f"  search hits agree: {same}")


if __name__ == "__main__":
    main()
