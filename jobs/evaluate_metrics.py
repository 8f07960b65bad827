"""Scoring of custom QA sets, loaded by OpenCompass's eval tasks (config type
``jobs.evaluate_metrics.QAEvaluator``). Runs only inside the opencompass engine.

OpenCompass's default for custom QA (AccEvaluator) compares the whole generation with the gold,
which a chat model almost never matches; this counts an answer right when the normalised gold is
the normalised prediction or appears in it as whole words, and reports each item.
"""
from __future__ import annotations

import re
import string

from opencompass.openicl.icl_evaluator import BaseEvaluator


def normalise(text) -> str:
    text = str(text).lower()
    text = "".join(" " if c in string.punctuation or c in "，。？！：；、“”‘’（）" else c for c in text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def is_correct(prediction, gold) -> bool:
    p, g = normalise(prediction), normalise(gold)
    if not g:
        return False
    if p == g:
        return True
    if re.search(r"[\u4e00-\u9fff]", g):     # Chinese has no spaces between words
        return g in p.replace(" ", "")
    return f" {g} " in f" {p} "


class QAEvaluator(BaseEvaluator):

    def score(self, predictions, references):
        if len(predictions) != len(references):
            return {"error": "predictions and references have different lengths"}
        details = [{"pred": p, "answer": g, "correct": is_correct(p, g)} for p, g in zip(predictions, references)]
        right = sum(d["correct"] for d in details)
        return {"accuracy": 100.0 * right / max(1, len(details)), "details": details}
