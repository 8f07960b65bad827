"""A QA set evaluated with and without retrieval: the same model asked alone and through a knowledge-base
endpoint (jobs/rag_serve.py), each answer scored against the gold, and whether the retrieved passages held it.

The work is the ``rag_eval`` job (jobs/rag_eval.py); this module holds the scoring it uses, the choices the
Knowledge page offers, and the finished runs with their results. No streamlit here, no SQL.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from backend.access import users
from backend.pipeline import chat
from backend.runtime import logs
from backend.workspace.datasets import list_datasets
from backend.workspace.rows import scan
from backend.core.store import open_store

KIND = "rag_eval"
ENGINE = "rag"                      # a knowledge-base endpoint's engine (jobs/rag_serve.py)
ASCII_WORD = re.compile(r"[A-Za-z0-9]")


# -- scoring ------------------------------------------------------------------------------------------
def normal(text: str) -> str:
    """Lower case, full-width forms folded (NFKC), runs of whitespace made one space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(text)).lower()).strip()


def golds(answer) -> list[str]:
    """The accepted answers of a row: a string, or a list of strings (any of them counts)."""
    items = answer if isinstance(answer, list) else [answer]
    return [normal(a) for a in items if isinstance(a, (str, int, float)) and normal(a)]


def contains(text: str, answers: list[str]) -> bool:
    """Whether ``text`` says one of ``answers``: as a whole word where the answer begins or ends with a Latin
    letter or digit ("4" is not in "40"), anywhere for Chinese ("桂花糯米糍" in "是桂花糯米糍。")."""
    text = normal(text)
    for a in answers:
        before = r"(?<![a-z0-9])" if ASCII_WORD.match(a[0]) else ""
        after = r"(?![a-z0-9])" if ASCII_WORD.match(a[-1]) else ""
        if re.search(before + re.escape(a) + after, text):
            return True
    return False


def hit(passages: list[dict], answers: list[str], source: str = "") -> bool:
    """The answer's source passage is among those retrieved: a passage holding the answer (from ``source``,
    the row's document, when the row names one)."""
    return any(contains(p.get("text", ""), answers) and (not source or same_source(p.get("source", ""), source))
               for p in passages)


def same_source(found: str, wanted: str) -> bool:
    """``notes/velmora.md`` is ``velmora.md``; names compared without case."""
    return Path(found).name.lower() == Path(wanted).name.lower() or found.lower() == wanted.lower()


def summary(items: list[dict]) -> dict:
    """Accuracy alone and with retrieval, the retrieval hit rate (percentages over the rows asked), and how many
    questions retrieval fixed (wrong alone, right with it) and broke (the other way)."""
    n = len(items)
    pct = lambda k: round(100.0 * sum(bool(it[k]) for it in items) / n, 2) if n else None     # noqa: E731
    return {"questions": n, "alone_accuracy": pct("alone_correct"), "rag_accuracy": pct("rag_correct"),
            "hit_rate": pct("hit"),
            "fixed": sum(1 for it in items if it["rag_correct"] and not it["alone_correct"]),
            "broke": sum(1 for it in items if it["alone_correct"] and not it["rag_correct"])}


# -- what the page offers -----------------------------------------------------------------------------
def kb_endpoints(home: Path, by: users.Actor) -> list[dict]:
    """Live knowledge-base endpoints ``by`` may use (each names its model endpoint as ``upstream``)."""
    return [e for e in chat.endpoints(home, by) if e.get("engine") == ENGINE]


def qa_datasets(home: Path, by: users.Actor) -> list[str]:
    """Datasets ``by`` may use whose first record has a question and an answer."""
    out = []
    for d in list_datasets(home, by):
        first = next((rec for _, rec, _ in scan(d.path)), None) if Path(d.path).is_file() else None
        if isinstance(first, dict) and "question" in first and "answer" in first:
            out.append(d.name)
    return out


# -- past runs ----------------------------------------------------------------------------------------
def runs(home: Path, by: users.Actor) -> list[dict]:
    """rag_eval jobs ``by`` may see, newest first: ``{"job_id", "state", "name", "endpoint", "dataset", "error"}``."""
    return [{"job_id": j.id, "state": j.state, "name": j.label, "endpoint": j.spec.get("endpoint", ""),
             "dataset": j.spec.get("dataset", ""), "error": j.error_message or ""}
            for j in open_store(home).jobs(kind=KIND, limit=500) if users.may_use(j.owner, by, home=home)]


def result(job_id: int, home: Path, by: users.Actor) -> dict | None:
    """A finished run's result (summary, items); refused (audited) when it is another student's."""
    job = open_store(home).job(job_id)
    if job is None or job.kind != KIND:
        return None
    if not users.may_use(job.owner, by, home=home):
        users.refuse(by, "see", f"evaluation {job_id}", users.Refused("err.users.eval_not_yours", job=job_id), home=home)
    r = logs.result(job_id, home)
    return r if r and r.get("ok") and "summary" in r else None


def side_by_side(res: dict) -> list[dict]:
    """One row a question: the gold, the answer alone and with retrieval (each marked), hit, the first passage's place."""
    from backend.pipeline.rag import place
    return [{"question": it["question"], "answer": it["answer"],
             "alone": ("✓ " if it["alone_correct"] else "✗ ") + it["alone"],
             "with_retrieval": ("✓ " if it["rag_correct"] else "✗ ") + it["rag"],
             "hit": "✓" if it["hit"] else "✗",
             "passage": place(it["passages"][0]) if it["passages"] else ""} for it in res["items"]]
