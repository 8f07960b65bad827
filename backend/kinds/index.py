"""The index job's spec (jobs/index.py): a knowledge base from a documents folder (an upload, or the bundled
demo ``demo``) or a dataset's text column, split into passages and indexed with BM25 (backend/pipeline/rag.py)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.pipeline import rag
from backend.core.errors import UserError

KIND = Kind("index", "jobs.index", cpu_slots=0,
           doc="a knowledge base: documents or a dataset's text split into passages and indexed (BM25, jieba for Chinese)")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=100)   # the knowledge base's registry name
    folder: str = ""               # documents: "demo", or an upload's folder under documents/ (rag.save_upload)
    dataset: str = ""              # or a registered dataset's text column
    text_field: str = "text"
    chunk_size: int = Field(256, ge=32, le=8192)    # tokens a passage holds: ~190 English words or ~250 汉字
    chunk_overlap: int = Field(32, ge=0)            # tokens shared by neighbouring passages
    embedding_model: str = ""      # a registry sentence-transformers model: dense retrieval beside (or instead of) BM25
    hybrid: bool = True            # with an embedding model: BM25 too, the two fused by reciprocal rank


def check(spec: Spec, home: Path, owner: str) -> dict:
    """Refuse what can't be indexed before queueing: no source or two, an overlap as large as a passage,
    a folder outside documents/, an embedding model that is no sentence-transformers model."""
    if bool(spec.folder) == bool(spec.dataset):
        raise UserError("err.rag.one_source")
    if spec.chunk_overlap >= spec.chunk_size:
        raise UserError("err.rag.overlap", overlap=spec.chunk_overlap, size=spec.chunk_size)
    if spec.folder:
        rag.source_folder(spec.folder, home=home)
    if spec.embedding_model:
        rag.embedder(spec.embedding_model, home)
    return {}
