"""What the registry holds: one type per kind of thing, and the record of one entry.

  model     a transformers model folder           meta: source, id, revision, size_bytes, trust_remote_code, ...
  dataset   a dataset file                        meta: format, rows, size, source, parent?, seed?
  adapter   a LoRA adapter folder                 meta: base_model, datasets, method, metrics
  endpoint  a running server (serve / vlm job)    meta: url, model, kind ("chat" | "vlm"), base_of?, ...
  eval      an evaluation run's results           meta: models, datasets, table
  announcement  the instructor's banner           meta: text
  kb        a knowledge base (index job)          meta: source, documents, chunks, size_bytes, chunk_size, ...
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from backend.core.job import Record


class RegistryType(StrEnum):
    MODEL = "model"
    DATASET = "dataset"
    ADAPTER = "adapter"
    ENDPOINT = "endpoint"
    EVAL = "eval"
    ANNOUNCEMENT = "announcement"     # the class announcement (backend/pipeline/classroom.py), one entry
    KB = "kb"                         # a knowledge base: a BM25 index in an index job's artifacts (backend/pipeline/rag.py)


@dataclass(frozen=True)
class Entry(Record):
    id: int
    type: RegistryType
    name: str
    path: str
    meta: dict
    job_id: int | None
    owner: str
    created_at: float
    shared: bool = False          # the owner (or an instructor) shared it with the class (ownership.share)

    def __post_init__(self):
        object.__setattr__(self, "type", RegistryType(self.type))
        object.__setattr__(self, "shared", bool(self.shared))


def endpoint_meta(url: str, model: str, engine: str, device: str, job_id: int, source: str, load_s: float,
                  context_len: int | None, **extra) -> dict:
    """The fields every endpoint has, whichever job serves it (serve: an OpenAI-compatible ``url`` ending
    in /v1; vlm: our image-text server), plus the job's own (``extra``: tokenizer, generation defaults,
    base_of, max_images...). ``requests`` is kept up to date by the serving job."""
    return {"url": url, "model": model, "engine": engine, "device": device, "job_id": job_id,
            "started": time.time(), "source": source, "requests": 0, "load_s": round(load_s, 1),
            "context_len": context_len, **extra}
