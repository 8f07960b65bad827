"""Deploy: variants of one model side by side (the original and its quantised copies), measured through
their live servers: weights on disk, memory the server holds, time to first token, tokens/s with one
client and with several at once, and an evaluation score where one run measured both.

``stream_once`` / ``concurrent`` are the measuring code bench/chat.py uses too.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from backend.access import ownership, users
from backend.pipeline import chat
from backend.core.store import open_store

PROMPT = "Explain in a few sentences why the sky is blue."
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def stream_once(ep: dict, tokens: int) -> tuple[int, float | None]:
    """One greedy streamed answer of exactly ``tokens`` tokens: (completion tokens, time to first token)."""
    from openai import OpenAI
    client = OpenAI(base_url=ep["url"], api_key=ep.get("api_key") or "none", max_retries=0)
    t0 = time.perf_counter()
    ttft, usage, n = None, None, 0
    stream = client.chat.completions.create(
        model=ep["model"], messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0,
        stream=True, extra_body={"generation_config": f'{{"min_new_tokens": {tokens}, '
                                                      f'"max_new_tokens": {tokens}, "do_sample": false}}'})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - t0
            n += 1
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return usage or n, ttft


def concurrent(ep: dict, tokens: int, clients: int) -> tuple[float, float]:
    """Aggregate completion tokens/s of ``clients`` concurrent greedy streams, and their mean TTFT."""
    got: list = []
    errors: list = []

    def one():
        try:
            got.append(stream_once(ep, tokens))
        except Exception as e:    # noqa: BLE001 - reported below as a sentence
            errors.append(e)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    if errors:
        raise chat.ChatError("err.deploy.clients_failed", failed=len(errors), clients=clients, error=str(errors[0]))
    return sum(n for n, _ in got) / wall, sum(t or wall for _, t in got) / len(got)


def median_of(repeat: int, fn) -> tuple[float, float]:
    """Median tokens/s and median TTFT of ``repeat`` calls of ``fn() -> (tok/s, ttft)``."""
    runs = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def server_memory_gb(job_pid: int | None) -> float | None:
    """Resident memory of a serve job's process and the server it started (psutil; the server's
    unique set would hide shared libraries every process maps, so RSS, summed)."""
    import psutil
    try:
        root = psutil.Process(job_pid)
        return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**30, 2)
    except (psutil.Error, TypeError, ValueError):
        return None


def weights_bytes(path: str | Path) -> int:
    folder = Path(path)
    files = [folder] if folder.is_file() else folder.rglob("*")
    return sum(f.stat().st_size for f in files if f.suffix in WEIGHT_SUFFIXES)


def measure(ep: dict, tokens: int = 32, clients: int = 8, repeat: int = 1, *, home: Path) -> dict:
    """Figures for one live endpoint (warm-up first); raises chat.ChatError if the server fails."""
    stream_once(ep, 2)
    tps1, ttft = median_of(repeat, lambda: concurrent(ep, tokens, 1))
    tpsn, ttftn = median_of(repeat, lambda: concurrent(ep, tokens, clients))
    job = open_store(home).job(ep["job_id"])
    return {"ttft_ms": round(ttft * 1000), "tps_1": round(tps1, 1), f"tps_{clients}": round(tpsn, 1),
            "clients": clients, "ttft_ms_n": round(ttftn * 1000), "memory_gb": server_memory_gb(job.pid if job else None),
            "continuous_batching": bool(ep.get("continuous_batching")), "kv_cache_gb": ep.get("kv_cache_gb"),
            "engine": ep.get("engine"), "device": ep.get("device"), "tokens": tokens, "when": time.time()}


def family(model: str, home: Path, by: users.Actor) -> list[str]:
    """The model's root (what it was quantised from, followed up) and every model quantised from it that ``by``
    may use."""
    store = open_store(home)
    seen = {model}
    root = model
    while (e := store.get("model", root)) and e.meta.get("quantized_from") and e.meta["quantized_from"] not in seen:
        root = e.meta["quantized_from"]
        seen.add(root)
    out = [root]
    for e in ownership.items("model", by, home):
        if e.meta.get("quantized_from") in out and e.name not in out:
            out.append(e.name)
    return out


def eval_score(names: list[str], home: Path) -> tuple[str, dict[str, float]] | None:
    """(eval run, {model: mean score}) of the newest evaluation run that measured every one of ``names``."""
    for run in open_store(home).items("eval"):
        if set(names) <= set(run.meta.get("models", [])):
            scores = {}
            for n in names:
                vals = [float(r[n]) for r in run.meta.get("table", []) if is_number(r.get(n))]
                if vals:
                    scores[n] = round(sum(vals) / len(vals), 2)
            if len(scores) == len(names):
                return run.name, scores
    return None


def is_number(v) -> bool:
    """Whether a table cell is a score (OpenCompass writes '-' where it has none)."""
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def serving(model: str, home: Path, by: users.Actor) -> dict | None:
    """A live endpoint ``by`` may use serving exactly ``model`` (not base + adapter), continuous batching first."""
    eps = [e for e in chat.endpoints(home, by) if e.get("source") == model]
    return next((e for e in eps if e.get("continuous_batching")), eps[0] if eps else None)


def table(model: str, home: Path, by: users.Actor) -> list[dict]:
    """One row per variant ``by`` may use: name, method, weights on disk, its live endpoint, the last figures
    measured."""
    store = open_store(home)
    ownership.get("model", model, by, home)
    names = [n for n in family(model, home, by) if (e := store.get("model", n)) is not None and users.may_use(e, by, home=home)]
    score = eval_score(names, home)
    rows = []
    for n in names:
        e = store.get("model", n)
        if e is None:
            continue
        ep = serving(n, home, by)
        rows.append({"model": n, "method": e.meta.get("quant_method") or "original",
                     "weights": weights_bytes(e.path), "endpoint": ep["name"] if ep else None,
                     "figures": e.meta.get("deploy") or {},
                     "score": score[1][n] if score else None, "eval_run": score[0] if score else None})
    return rows


def measure_variant(model: str, tokens: int = 32, clients: int = 8, *, home: Path, by: users.Actor) -> dict:
    """Measure the live server of ``model`` (one ``by`` may use) and keep the figures with the model's entry."""
    ownership.get("model", model, by, home, "measure")
    ep = serving(model, home, by)
    if ep is None:
        raise chat.ChatError("err.deploy.no_server", model=model)
    figures = measure(ep, tokens, clients, home=home)
    store = open_store(home)
    e = store.get("model", model)
    store.put("model", model, e.path, {**e.meta, "deploy": figures}, job_id=e.job_id, owner=e.owner)
    return figures


def models(home: Path, by: users.Actor) -> list[str]:
    """Registry models ``by`` may use to compare, those with quantised copies first."""
    entries = ownership.items("model", by, home)
    roots = {e.meta.get("quantized_from") for e in entries}
    return sorted((e.name for e in entries if not e.meta.get("quantized_from")),
                  key=lambda n: (n not in roots, n))
