"""The rag_serve job's spec (jobs/rag_serve.py): a knowledge base and a live model endpoint served together as
an OpenAI-compatible endpoint whose answers come with the passages they were given."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.pipeline import chat, rag
from backend.core.errors import UserError

KIND = Kind("rag_serve", "jobs.rag_serve", cpu_slots=0, long_lived=True,
           doc="a knowledge base + a model endpoint served as an OpenAI-compatible endpoint that answers with retrieved passages")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kb: str = Field(..., min_length=1)          # a knowledge base (registry type kb)
    endpoint: str = Field(..., min_length=1)    # a live model endpoint (Chat page) that writes the answers
    name: str = Field("", max_length=120)      # the endpoint's name; default "<kb> + <endpoint>"
    top_k: int = Field(3, ge=1, le=20)          # passages put into each prompt
    reranker: str = ""                          # a registry cross-encoder that re-orders 4 × top_k candidates


def upstream(spec: Spec, home: Path, owner: str) -> dict:
    """The live model endpoint the answers come from (not another knowledge-base endpoint)."""
    ep = next((e for e in chat.endpoints(home, by=owner) if e["name"] == spec.endpoint and e.get("engine") != "rag"), None)
    if ep is None:
        raise UserError("err.rag.no_endpoint", name=spec.endpoint)
    return ep


def check(spec: Spec, home: Path, owner: str) -> dict:
    """The knowledge base is checked (it exists, its owner may use it) by queue.submit; the model endpoint and the
    reranker here. It stays a light job even with a reranker or an embedder to load (small encoders): on the
    one-slot demo box the model server holds the CPU slot, and each student's light jobs are capped instead."""
    upstream(spec, home, owner)
    if spec.reranker:
        rag.reranker(spec.reranker, home)
    return {}
