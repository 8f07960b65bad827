"""Prompts for GRPO (objective grpo): every row a prompt in TRL's conversational form plus the row's
other columns, which the rewards read (an ``answer`` or ``solution`` to match, a name ...).

Read: prompt-only rows ``{"prompt": str | [messages], <columns>...}``; OpenCompass QA rows
``{"question", "answer"?}`` (GSM8K and the like: the question is the prompt, ``answer`` a column); and any
chat dataset (alpaca, sharegpt, messages, xtuner): the messages before the last assistant reply are the
prompt and that reply is the ``answer`` column. Column values reach the rewards as text.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from backend import datasets
from backend.errors import UserError

FORMATS = ("prompt", "qa") + datasets.TRAIN_FORMATS


def _column(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def to_prompt(rec: dict) -> dict:
    """One row as ``{"prompt": [messages], <column>: str, ...}``; ValueError saying what is wrong."""
    if not isinstance(rec, dict):
        raise UserError("err.rec.not_object", type=type(rec).__name__)
    fmt = datasets.record_format(rec)
    if fmt == "prompt":
        value = rec["prompt"]
        if isinstance(value, list):
            prompt = []
            for i, m in enumerate(value):
                if not isinstance(m, dict):
                    raise UserError("err.pref.not_object", where="prompt", i=i)
                datasets._turn(prompt, m.get("role"), m.get("content"), f"prompt[{i}]", m)
        else:
            prompt = [{"role": "user", "content": datasets._text(value, "prompt")}]
        return {"prompt": prompt, **{k: _column(v) for k, v in rec.items() if k != "prompt"}}
    if fmt == "qa":
        columns = {k: _column(v) for k, v in rec.items() if k != "question"}
        return {"prompt": [{"role": "user", "content": datasets._text(rec["question"], "question")}], **columns}
    if fmt in datasets.TRAIN_FORMATS:
        msgs = datasets.to_messages(rec, fmt)
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return {"prompt": [dict(m) for m in msgs]}
        if last == 0:
            raise UserError("err.grpo.no_prompt")
        return {"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:last]],
                "answer": msgs[last]["content"]}
    raise UserError("err.grpo.not_prompts", fmt=fmt, formats=", ".join(FORMATS))


def load(path: str | Path, limit: int | None = None) -> list[dict]:
    """Every row of one dataset as a prompt row (DatasetError naming the first bad line)."""
    rows = datasets._read_all(path, to_prompt, limit)
    keys = {tuple(sorted(r)) for r in rows}
    if len(keys) > 1:            # TRL's dataset needs the same columns in every row
        common = set.intersection(*(set(k) for k in keys))
        rows = [{k: v for k, v in r.items() if k in common} for r in rows]
    return rows


# -- the checks before queueing ----------------------------------------------------------------------
MEAN_PROMPT_TOKENS = 64          # a prompt's length in the duration estimate (the check does not tokenize them all)
GENERATION_COST = 2              # a generated token costs about this many trained tokens (decoding is sequential)


def check_spec(spec) -> None:
    """The GRPO settings that can be checked without the data (UserError, a sentence each)."""
    from backend import rewards
    rewards.check(spec.rewards)
    generation = spec.batch_size * spec.grad_accum
    if generation % spec.num_generations:
        raise UserError("err.grpo.batch", batch_size=spec.batch_size, grad_accum=spec.grad_accum, n=generation,
                        num_generations=spec.num_generations)
    if spec.max_completion_length >= spec.max_length:
        raise UserError("err.grpo.context", completion=spec.max_completion_length, max_length=spec.max_length)


def check_rows(spec, rows: list[dict], count) -> list[str]:
    """The data against the rewards and the context: a column a reward reads is in the rows, some prompts
    fit ``max_length - max_completion_length`` (``count``: backend.finetune.token_counter's, or None).
    Returns warnings; raises UserError when nothing can run."""
    from backend import rewards
    for r, name in zip(spec.rewards, rewards.names(spec.rewards)):
        if r.kind == "answer" and r.column not in rows[0]:
            raise UserError("err.grpo.no_column", name=name, column=r.column,
                            columns=", ".join(k for k in rows[0] if k != "prompt") or "-")
    if count is None:
        return []
    room = spec.max_length - spec.max_completion_length
    lengths = [count(r["prompt"] + [{"role": "assistant", "content": "x"}])[0] for r in rows[:200]]
    fit = sum(1 for n in lengths if n <= room)
    if not fit:
        raise UserError("err.grpo.prompts_long", room=room, shortest=min(lengths), max_length=spec.max_length,
                        completion=spec.max_completion_length)
    return [] if fit == len(lengths) else [
        f"{len(lengths) - fit} of {len(lengths)} sampled prompts are longer than max_length - max_completion_length "
        f"({room} tokens): they will be skipped"]


def grpo_tokens(spec: dict, rows: int, mean_tokens: float) -> int:
    """Tokens a GRPO run processes (prompt + answer, each prompt num_generations times), generation counted
    GENERATION_COST times: the duration estimate's measure."""
    per_step = int(spec.get("batch_size", 1)) * int(spec.get("grad_accum", 1))
    steps = int(spec.get("max_steps") or 0) or math.ceil(
        float(spec.get("epochs", 1.0)) * rows * int(spec.get("num_generations", 8)) / per_step)
    return int(steps * per_step * mean_tokens * GENERATION_COST)
