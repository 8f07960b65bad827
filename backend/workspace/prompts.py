"""Prompts for GRPO (objective grpo): every row a prompt in TRL's conversational form plus the row's
other columns, which the rewards read (an ``answer`` or ``solution`` to match, a name ...).

Read: prompt-only rows ``{"prompt": str | [messages], <columns>...}``; OpenCompass QA rows
``{"question", "answer"?}`` (GSM8K and the like: the question is the prompt, ``answer`` a column); and any
chat dataset (alpaca, sharegpt, messages, xtuner): the messages before the last assistant reply are the
prompt and that reply is the ``answer`` column. Column values reach the rewards as text.
"""
from __future__ import annotations

import math
from pathlib import Path

from backend.workspace import datasets

FORMATS = ("prompt", "qa") + datasets.TRAIN_FORMATS


def load(path: str | Path, limit: int | None = None) -> list[dict]:
    """Every row of one dataset as a prompt row (DatasetError naming the first bad line)."""
    rows = datasets._read_all(path, datasets.to_prompt, limit)
    keys = {tuple(sorted(r)) for r in rows}
    if len(keys) > 1:            # TRL's dataset needs the same columns in every row
        common = set.intersection(*(set(k) for k in keys))
        rows = [{k: v for k, v in r.items() if k in common} for r in rows]
    return rows


# -- the checks before queueing ----------------------------------------------------------------------
MEAN_PROMPT_TOKENS = 64          # a prompt's length in the duration estimate (the check does not tokenize them all)
GENERATION_COST = 2              # a generated token costs about this many trained tokens (decoding is sequential)


def grpo_tokens(spec: dict, rows: int, mean_tokens: float) -> int:
    """Tokens a GRPO run processes (prompt + answer, each prompt num_generations times), generation counted
    GENERATION_COST times: the duration estimate's measure."""
    per_step = int(spec.get("batch_size", 1)) * int(spec.get("grad_accum", 1))
    steps = int(spec.get("max_steps") or 0) or math.ceil(
        float(spec.get("epochs", 1.0)) * rows * int(spec.get("num_generations", 8)) / per_step)
    return int(steps * per_step * mean_tokens * GENERATION_COST)
