"""rag_eval: a QA dataset asked of a model alone and of the same model through a knowledge-base endpoint.

For each of the first ``limit`` rows it asks the knowledge-base endpoint's model endpoint the question (greedy),
then the knowledge-base endpoint itself, which answers with the passages it retrieved; each answer is correct
when it says the row's answer, and the retrieval is a hit when a passage (from the row's ``source`` document,
when given) holds it (backend/pipeline/rag_eval.py). result.json: the summary (accuracy alone and with retrieval, hit
rate, questions fixed and broken by retrieval) and every item; registered as ``eval/<name>`` with a table like
the evaluate job's. Light: the endpoints do the inference (cpu_slots 0).
"""
from __future__ import annotations

from pathlib import Path

from backend.pipeline import chat
from backend.workspace import datasets
from backend.pipeline import rag_eval as score
from backend.core.errors import BAD_INPUT, UserError
from backend.workspace.rows import scan
from backend.kinds.rag_eval import Spec, endpoints
from jobs.common import Job, JobError, run

PASSAGE_CHARS = 600             # of each passage kept in result.json


def rows(spec: Spec, job: Job) -> list[dict]:
    """The first ``limit`` rows with a question and an answer: ``{"index", "question", "answers", "source"}``."""
    try:
        path = datasets.resolve(spec.dataset, job.home)
    except UserError as e:
        raise JobError(str(e), BAD_INPUT, "pick a registered dataset") from None
    out = []
    for i, rec, _ in scan(path):
        if not isinstance(rec, dict):
            continue
        question, answers = rec.get(spec.question_field), score.golds(rec.get(spec.answer_field))
        if isinstance(question, str) and question.strip() and answers:
            source = rec.get(spec.source_field)
            out.append({"index": i, "question": question.strip(), "answer": rec.get(spec.answer_field),
                        "answers": answers, "source": source if isinstance(source, str) else ""})
        if len(out) >= spec.limit:
            break
    if not out:
        raise JobError(f"dataset {spec.dataset} has no row with a {spec.question_field!r} and an "
                       f"{spec.answer_field!r}", BAD_INPUT, "name the dataset's question and answer fields")
    return out


def ask(endpoint: dict, question: str, spec: Spec, owner: str, home: Path) -> tuple[str, list[dict], str]:
    """(the answer, the passages a knowledge-base endpoint used, the error when it could not answer)."""
    stats: dict = {}
    try:
        text = "".join(chat.stream_chat(endpoint, [{"role": "user", "content": question}], temperature=0,
                                        max_tokens=spec.max_tokens, stats=stats, by=owner, home=home))
        return text.strip(), stats.get("passages") or [], ""
    except chat.ChatError as e:
        return e.partial.strip(), stats.get("passages") or [], str(e)


def main(spec: Spec, job: Job) -> dict:
    try:
        kb, model = endpoints(spec, job.home, job.owner)
        chat.check_use(kb, job.owner, home=job.home)
        chat.check_use(model, job.owner, home=job.home)
    except UserError as e:              # gone, or not the owner's to use (audited)
        raise JobError(str(e), BAD_INPUT, "serve a knowledge base with a model on the Knowledge page") from None
    todo = rows(spec, job)
    job.message(f"asking {len(todo)} questions of {model['name']} alone and through {kb['name']} ({kb.get('kb')})")
    items = []
    for n, row in enumerate(todo, 1):
        alone, _, alone_error = ask(model, row["question"], spec, job.owner, job.home)
        rag, passages, rag_error = ask(kb, row["question"], spec, job.owner, job.home)
        items.append({"index": row["index"], "question": row["question"], "answer": row["answer"],
                      "source": row["source"], "alone": alone, "rag": rag,
                      "alone_correct": not alone_error and score.contains(alone, row["answers"]),
                      "rag_correct": not rag_error and score.contains(rag, row["answers"]),
                      "hit": score.hit(passages, row["answers"], row["source"]),
                      "passages": [{**p, "text": p.get("text", "")[:PASSAGE_CHARS]} for p in passages],
                      **({"errors": {"alone": alone_error, "rag": rag_error}} if alone_error or rag_error else {})})
        job.progress(n, len(todo), "questions", row["question"][:60])
    if all(it.get("errors") for it in items):
        first = items[0]["errors"]
        raise JobError(f"no question was answered: {first['alone'] or first['rag']}", BAD_INPUT,
                       "check that both endpoints are running and answer on the Chat page")
    summary = score.summary(items)
    job.message(f"accuracy alone {summary['alone_accuracy']}%, with retrieval {summary['rag_accuracy']}%, "
                f"retrieval hit rate {summary['hit_rate']}% ({summary['fixed']} fixed, {summary['broke']} broken)")
    name = spec.name or f"rag-eval-{job.id}"
    row = {"dataset": spec.dataset, "mode": "gen"}
    table = [{**row, "metric": "accuracy", "model": model["name"], "score": summary["alone_accuracy"]},
             {**row, "metric": "accuracy", "model": kb["name"], "score": summary["rag_accuracy"]},
             {**row, "metric": "retrieval hit rate", "model": kb["name"], "score": summary["hit_rate"]}]
    meta = {"models": [model["name"], kb["name"]], "datasets": [spec.dataset], "table": table,
            "rag": {"kb": kb.get("kb"), "endpoint": kb["name"], "model": model["name"], "top_k": kb.get("top_k"),
                    **summary}}
    job.register("eval", name, job.dir, meta)
    return {"registered": name, "summary": summary, "kb": kb.get("kb"), "endpoint": kb["name"],
            "model": model["name"], "dataset": spec.dataset, "table": table, "items": items}


if __name__ == "__main__":
    run(main, Spec)
