"""The rag_eval job's spec (jobs/rag_eval.py): a QA dataset asked of a knowledge-base endpoint's model alone and
through the knowledge-base endpoint, scored for accuracy each way and for the retrieval hit rate."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backend.pipeline import chat
from backend.core.errors import UserError
from backend.kinds import Kind

KIND = Kind("rag_eval", "jobs.rag_eval", cpu_slots=0,
            doc="a QA dataset asked of a model alone and through a knowledge-base endpoint: accuracy each way, retrieval hit rate")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(..., min_length=1)        # a live knowledge-base endpoint (a rag_serve job's)
    dataset: str = Field(..., min_length=1)         # a registered dataset with a question and an answer a row
    question_field: str = "question"
    answer_field: str = "answer"                    # a string, or a list of accepted answers
    source_field: str = "source"                    # optional: the document the answer is in (for the hit rate)
    limit: int = Field(50, ge=1, le=1000)           # the first rows asked
    max_tokens: int = Field(48, ge=1, le=2048)      # per answer (greedy)
    name: str = Field("", max_length=100)           # the eval registry entry's name; default rag-eval-<job>


def endpoints(spec: Spec, home: Path, owner: str) -> tuple[dict, dict]:
    """(the knowledge-base endpoint, its model endpoint), both live and ``owner``'s to use."""
    live = chat.endpoints(home, by=owner)
    kb = next((e for e in live if e["name"] == spec.endpoint and e.get("engine") == "rag"), None)
    if kb is None:
        raise UserError("err.rag_eval.no_kb_endpoint", name=spec.endpoint)
    model = next((e for e in live if e["name"] == kb.get("upstream") and e.get("engine") != "rag"), None)
    if model is None:
        raise UserError("err.rag.no_endpoint", name=kb.get("upstream", "?"))
    return kb, model


def check(spec: Spec, home: Path, owner: str) -> dict:
    """Refuse before queueing a name that is no live knowledge-base endpoint, or one whose model is gone (the use
    rule, asked by queue.submit, covers the endpoint and the dataset)."""
    endpoints(spec, home, owner)
    return {}
