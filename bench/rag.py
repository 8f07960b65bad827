"""Knowledge-base benchmark: building the index of 1,000 pages with the index job's code (backend/pipeline/rag.py: read,
SentenceSplitter, BM25 with jieba for Chinese) against a plain LlamaIndex script on the same documents
(SimpleDirectoryReader, SentenceSplitter, BM25Retriever.from_defaults, persist), and retrieval latency per query.

    .venv/bin/python bench/rag.py [--pages 1000] [--queries 200]

Pages are ~2,000 characters of generated English with Chinese sentences mixed in (one page in ten), ten pages
a file. Both builds run in this process after a warm-up on a few pages (imports and jieba's dictionary are
not counted). Goal: ours >= 1.0x the plain script's speed.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)             # not bench/ itself: its queue.py would hide the standard library's

from backend.pipeline import rag  # noqa: E402

WORDS = ("the model learns from data and answers questions about language tokens training evaluation harbour "
         "island capital mascot course project lantern mountain currency heron retrieval passage index").split()
ZH = ("书生浦语大模型在数据上学习并回答关于语言的问题。青岚镇的桂花节在九月举办。"
      "检索增强生成把段落放进提示词。")


def generate(folder: Path, pages: int) -> list[str]:
    """``pages`` pages in files of ten; returns one query per page (words of that page)."""
    rnd, queries = random.Random(0), []
    for f in range(0, pages, 10):
        text = []
        for p in range(f, min(f + 10, pages)):
            words = rnd.choices(WORDS, k=300) + [f"fact{p}"]
            rnd.shuffle(words)
            page = ". ".join(" ".join(words[i:i + 15]) for i in range(0, len(words), 15)) + "."
            text.append(page + ("\n" + ZH * 3 if p % 10 == 3 else ""))
            queries.append("青岚镇的桂花节在几月？" if p % 10 == 3 else f"what about fact{p} and the {rnd.choice(WORDS)}?")
        (folder / f"doc{f // 10:04d}.txt").write_text("\n\n".join(text), encoding="utf-8")
    return queries


def plain(folder: Path, out: Path, size: int, overlap: int) -> int:
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.retrievers.bm25 import BM25Retriever
    docs = SimpleDirectoryReader(str(folder)).load_data()
    nodes = SentenceSplitter(chunk_size=size, chunk_overlap=overlap).get_nodes_from_documents(docs)
    BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=3).persist(str(out))
    return len(nodes)


def ours(folder: Path, out: Path, size: int, overlap: int) -> int:
    units, _ = rag.read_folder(folder)
    nodes = rag.split(units, size, overlap)
    rag.build(nodes, out, top_k=3)
    return len(nodes)


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wb-bench-rag-") as tmp:
        tmp = Path(tmp)
        (tmp / "docs").mkdir()
        (tmp / "warm").mkdir()
        queries = generate(tmp / "docs", args.pages)
        generate(tmp / "warm", 20)
        for i, fn in enumerate((plain, ours)):              # imports, jieba's dictionary: not counted
            fn(tmp / "warm", tmp / f"warm-{i}", 256, 32)
        size = sum(p.stat().st_size for p in (tmp / "docs").iterdir())
        print(f"{args.pages} pages, {size / 2**20:.1f} MB of text; chunk_size 256, overlap 32")
        t_plain, n_plain = timed(plain, tmp / "docs", tmp / "plain", 256, 32)
        t_ours, n_ours = timed(ours, tmp / "docs", tmp / "ours", 256, 32)
        print(f"plain LlamaIndex script: {t_plain:6.2f} s, {n_plain} passages")
        print(f"index job (backend/pipeline/rag): {t_ours:6.2f} s, {n_ours} passages (with jieba for Chinese)")
        print(f"speed ratio ours/plain: {t_plain / t_ours:.2f}x (goal >= 1.0x)")
        retriever = rag.load(tmp / "ours", 3)
        picked = random.Random(1).choices(queries, k=args.queries)
        hits, times = 0, []
        for q in picked:
            t0 = time.perf_counter()
            found = rag.retrieve(retriever, q)
            times.append((time.perf_counter() - t0) * 1000)
            word = q.split()[2] if q.startswith("what about") else "桂花节"
            hits += bool(found) and word in found[0]["text"]
        times.sort()
        print(f"retrieval over {n_ours} passages, {len(times)} queries: median {statistics.median(times):.2f} ms, "
              f"p95 {times[int(len(times) * 0.95) - 1]:.2f} ms; "
              f"top passage holds the query's fact: {hits / len(times):.0%}")


if __name__ == "__main__":
    main()
