"""dataset_stats: rows, fields, missing values, duplicates, languages and a token-length histogram
(with a model's tokenizer and chat template) of one dataset, streamed with a progress bar."""
from __future__ import annotations

import json
from pathlib import Path


from backend.workspace import datasets, image_text, remote_code
from backend.workspace.dataset_view import open_view
from backend.core.errors import BAD_INPUT
from backend.kinds.dataset_stats import Spec
from backend.core.store import open_store
from jobs.common import Job, JobError, run

BATCH = 512            # rows tokenized at once


def language(text: str) -> str:
    """zh when CJK characters make up a fair share of the letters, en when ASCII letters dominate."""
    cjk = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    if cjk and cjk * 3 >= latin:
        return "zh"
    if latin:
        return "en"
    return "other"


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def load_tokenizer(name: str, home: Path):
    entry = open_store(home).get("model", name)
    path = Path(entry.path) if entry else (home / "models" / name)
    if not path.is_dir():
        raise JobError(f"no model {name!r} in the registry", BAD_INPUT, "pick a model from the Models page")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=remote_code.trust(path, home))


def render(rec: dict, fmt: str, tokenizer) -> str:
    """The text the model sees for a row: the chat template for conversations, else the fields."""
    if fmt in datasets.TRAIN_FORMATS:
        chat = image_text.to_chat(rec, fmt)[0] if image_text.image_fields(rec) else datasets.to_messages(rec, fmt)
        msgs = [{"role": m["role"], "content": m["content"]} for m in chat]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False)
        return "\n".join(m["content"] for m in msgs)
    if fmt == "mcq":
        opts = [f"{k}. {rec[k]}" for k in datasets.MCQ_LETTERS if k in rec]
        return "\n".join([str(rec.get("question", "")), *opts, f"Answer: {rec.get('answer', '')}"])
    if fmt == "qa":
        return f"{rec.get('question', '')}\n{rec.get('answer', '')}"
    return "\n".join(strings(rec))


def main(spec: Spec, job: Job) -> dict:
    import numpy as np


    try:
        path = datasets.resolve(spec.dataset, job.home)
        total = len(open_view(path, job.home))
    except datasets.DatasetError as e:
        raise JobError(str(e), BAD_INPUT, "upload the file on the Datasets page first") from None
    fmt = datasets.detect_format(path)
    if spec.limit:
        total = min(total, spec.limit)
    tokenizer = load_tokenizer(spec.model, job.home) if spec.model else None
    unit = "tokens" if tokenizer is not None else "characters"
    job.message(f"{path.name}: {total} rows, format {fmt}, lengths in {unit}")

    lengths, lines, hashes = [], [], []
    fields, missing, langs = {}, {}, {}
    bad, bad_lines, rows = 0, [], 0
    pending: list[tuple[int, str]] = []

    def flush():
        texts = [t for _, t in pending]
        if tokenizer is not None:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            lengths.extend(len(x) for x in ids)
        else:
            lengths.extend(len(t) for t in texts)
        lines.extend(n for n, _ in pending)
        pending.clear()

    for n, rec, err in datasets.scan(path):
        if rows + bad >= total:
            break
        if err is not None:
            if n == 0:
                raise JobError(str(err), BAD_INPUT)
            bad += 1
            bad_lines += [n][:100 - len(bad_lines)]
            continue
        rows += 1
        for k, v in rec.items():
            fields[k] = fields.get(k, 0) + 1
            if v is None or v == "" or v == []:
                missing[k] = missing.get(k, 0) + 1
        hashes.append(hash(json.dumps(rec, sort_keys=True, ensure_ascii=False)))
        lang = language(" ".join(strings(rec))[:2000])
        langs[lang] = langs.get(lang, 0) + 1
        try:
            pending.append((n, render(rec, fmt, tokenizer)))
        except ValueError:
            bad += 1
            bad_lines += [n][:100 - len(bad_lines)]
        if len(pending) >= BATCH:
            flush()
        job.progress(rows + bad, total, "rows")
    if pending:
        flush()
    job.progress(rows + bad, total, "rows", force=True)
    for k in fields:                               # a field absent from a row is missing there too
        missing[k] = missing.get(k, 0) + rows - fields[k]

    arr = np.asarray(lengths, dtype=np.int64)
    line_arr = np.asarray(lines, dtype=np.int64)
    over = arr > spec.max_length
    counts, edges = np.histogram(arr, bins=spec.bins) if len(arr) else (np.zeros(0), np.zeros(0))
    dupes = len(hashes) - len(np.unique(np.asarray(hashes, dtype=np.int64))) if hashes else 0
    pct = (lambda q: int(np.percentile(arr, q))) if len(arr) else (lambda q: 0)
    stats = {
        "dataset": spec.dataset, "path": str(path), "format": fmt, "model": spec.model, "unit": unit,
        "rows": rows, "bad_rows": bad, "bad_lines": bad_lines, "fields": fields,
        "missing": {k: v for k, v in missing.items() if v}, "duplicates": int(dupes), "languages": langs,
        "lengths": {"min": int(arr.min()) if len(arr) else 0, "mean": round(float(arr.mean()), 1) if len(arr) else 0,
                    "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": int(arr.max()) if len(arr) else 0},
        "max_length": spec.max_length, "over_max": int(over.sum()), "over_max_lines": line_arr[over][:100].tolist(),
        "histogram": {"counts": [int(c) for c in counts], "edges": [round(float(e), 1) for e in edges]},
    }
    if image_text.has_images(path):                 # images per row and their sizes (the text counts above)
        stats["images"] = image_text.stats(path, spec.limit)
    (job.dir / "artifacts" / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
    job.message(f"{rows} rows ({bad} bad), {stats['over_max']} over {spec.max_length} {unit}, "
                f"{dupes} duplicates, languages {langs}")
    return stats


if __name__ == "__main__":
    run(main, Spec)
