"""GRPO rewards a student can read: each one a small function from the completions (plain strings)
and the dataset's columns to one score per completion, combined by the job with the weights the spec
gives them (TRL's ``reward_weights``).

  length      1 at ``target`` characters, falling linearly to 0 at 0 and at twice the target
  format      1 when the whole completion matches ``pattern`` (a regex, e.g. <think>…</think><answer>…</answer>)
  contains    the share of ``words`` the completion contains (case-insensitive): a keyword, a name
  answer      1 when the completion's answer equals the ``column`` value of the row: ``math`` through
              math-verify (1/2 = 0.5 = \\frac{1}{2}), ``numeric`` (the last number), ``exact`` (the text);
              the answer is what is inside the last <answer>…</answer> when there is one, else the text
  repetition  minus the share of repeated word ``ngram``-grams: 0 for no repetition, towards -1 for a loop
  python      ``code`` defining ``reward(completions, **columns) -> list[float]``, run only inside
              backend/runtime/sandbox.py's sandbox (never in the job's or the worker's process)

A failing reward raises UserError naming it (the job fails with that sentence).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.runtime import sandbox
from backend.core.errors import UserError

KINDS = ("length", "format", "contains", "answer", "repetition", "python")
SANDBOX_LIMITS = sandbox.Limits(cpu_s=10, memory_mb=1024, wall_s=30, output_kb=256)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class Reward(BaseModel):
    """One reward of a GRPO spec: its kind, weight and the setting its kind reads."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["length", "format", "contains", "answer", "repetition", "python"]
    weight: float = 1.0
    name: str = Field("", pattern=r"^$|^[A-Za-z][A-Za-z0-9_]{0,39}$")   # on the charts; "" = the kind
    target: int = Field(200, ge=1)                   # length: characters
    pattern: str = r"(?s)<think>.*</think>\s*<answer>.*</answer>"       # format
    words: list[str] = []                            # contains
    column: str = "answer"                           # answer: the dataset column holding the reference
    match: Literal["math", "numeric", "exact"] = "math"                 # answer
    ngram: int = Field(3, ge=1)                      # repetition
    code: str = ""                                   # python


# -- the presets ----------------------------------------------------------------------------------
def length(completions: list[str], target: int) -> list[float]:
    return [max(0.0, 1 - abs(len(c) - target) / target) for c in completions]


def format_(completions: list[str], pattern: str) -> list[float]:
    rx = re.compile(pattern)
    return [1.0 if rx.fullmatch(c.strip()) else 0.0 for c in completions]


def contains(completions: list[str], words: list[str]) -> list[float]:
    return [sum(w.lower() in c.lower() for w in words) / len(words) for c in completions]


def answer_of(text: str) -> str:
    found = ANSWER_TAG.findall(text)
    return (found[-1] if found else text).strip()


def _number(text: str) -> float | None:
    found = NUMBER.findall(text)
    try:
        return float(found[-1].replace(",", "")) if found else None
    except ValueError:
        return None


def answer(completions: list[str], references: list, match: str) -> list[float]:
    out = []
    for c, ref in zip(completions, references):
        got, ref = answer_of(c), "" if ref is None else str(ref)
        if match == "exact":
            ok = got == ref.strip()
        elif match == "numeric":
            a, b = _number(got), _number(ref)
            ok = a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))
        else:
            from math_verify import parse, verify
            gold = parse(ref)
            ok = bool(gold) and verify(gold, parse(got))
        out.append(1.0 if ok else 0.0)
    return out


def repetition(completions: list[str], ngram: int) -> list[float]:
    out = []
    for c in completions:
        words = c.split()
        grams = [tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)]
        out.append(-(1 - len(set(grams)) / len(grams)) if grams else 0.0)
    return out


# -- student code, in the sandbox -----------------------------------------------------------------
HARNESS = """
import json, math, sys
data = json.loads(sys.stdin.read())
space = {{"__name__": "reward"}}
exec(compile({code!r}, "reward.py", "exec"), space)
scores = [None if s is None else float(s) for s in space["reward"](data["completions"], **data["columns"])]
if len(scores) != len(data["completions"]) or any(s is not None and not math.isfinite(s) for s in scores):
    raise SystemExit("reward() must return one finite number per completion")
print("\\n@@rewards@@" + json.dumps(scores))
"""


def check_code(code: str, name: str) -> None:
    """A python reward's code parses and defines ``reward`` (UserError naming the reward otherwise)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise UserError("err.grpo.code_syntax", name=name, line=e.lineno or 0, error=e.msg) from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "reward" for n in tree.body):
        raise UserError("err.grpo.code_no_reward", name=name)


def sandboxed(code: str, name: str, folder: Path, limits: sandbox.Limits = SANDBOX_LIMITS):
    """The reward function that runs ``code`` in the sandbox, one run per batch of completions."""
    def run(completions: list[str], **columns) -> list[float | None]:
        stdin = json.dumps({"completions": completions, "columns": columns}, ensure_ascii=False).encode()
        out = sandbox.run(HARNESS.format(code=code), folder, limits, stdin=stdin)
        marker = out["output"].rfind("@@rewards@@")
        if not out["ok"] or marker < 0:
            raise UserError("err.grpo.reward_failed", name=name, error=out["error"] or out["output"][-300:].strip())
        return json.loads(out["output"][marker + len("@@rewards@@"):])
    return run


# -- the spec's rewards as functions ---------------------------------------------------------------
def names(rewards: list[Reward]) -> list[str]:
    """Each reward's name on the charts: its own, else its kind (length, length_2 ... when repeated)."""
    out: list[str] = []
    for r in rewards:
        base = r.name or r.kind
        n, k = base, 2
        while n in out:
            n, k = f"{base}_{k}", k + 1
        out.append(n)
    return out


def build(rewards: list[Reward], folder: Path) -> list[tuple[str, Callable]]:
    """(name, f(completions, **columns) -> scores) for each reward; ``folder``: the sandbox's run folder."""
    out = []
    for r, name in zip(rewards, names(rewards)):
        if r.kind == "length":
            f = lambda c, r=r, **_: length(c, r.target)                      # noqa: E731
        elif r.kind == "format":
            f = lambda c, r=r, **_: format_(c, r.pattern)                    # noqa: E731
        elif r.kind == "contains":
            f = lambda c, r=r, **_: contains(c, r.words)                     # noqa: E731
        elif r.kind == "answer":
            def f(c, r=r, name=name, **columns):
                if r.column not in columns:
                    raise UserError("err.grpo.no_column", name=name, column=r.column, columns=", ".join(columns))
                return answer(c, columns[r.column], r.match)
        elif r.kind == "repetition":
            f = lambda c, r=r, **_: repetition(c, r.ngram)                   # noqa: E731
        else:
            f = sandboxed(r.code, name, folder / name)
        out.append((name, f))
    return out


def check(rewards: list[Reward]) -> None:
    """Submit-time checks of the rewards: at least one, each one's setting usable (UserError)."""
    if not rewards:
        raise UserError("err.grpo.no_rewards")
    for r, name in zip(rewards, names(rewards)):
        if r.kind == "format":
            try:
                re.compile(r.pattern)
            except re.error as e:
                raise UserError("err.grpo.pattern", name=name, error=str(e)) from None
        elif r.kind == "contains" and not [w for w in r.words if w.strip()]:
            raise UserError("err.grpo.no_words", name=name)
        elif r.kind == "python":
            check_code(r.code, name)
            why = sandbox.refusal()
            if why is not None and not sandbox.bare_allowed():
                raise UserError("err.grpo.no_sandbox", name=name, why=why)


# -- GRPO's checks before queueing (backend/pipeline/finetune.py check) ------------------------------------
def check_spec(spec) -> None:
    """The GRPO settings that can be checked without the data (UserError, a sentence each)."""
    check(spec.rewards)
    generation = spec.batch_size * spec.grad_accum
    if generation % spec.num_generations:
        raise UserError("err.grpo.batch", batch_size=spec.batch_size, grad_accum=spec.grad_accum, n=generation,
                        num_generations=spec.num_generations)
    if spec.max_completion_length >= spec.max_length:
        raise UserError("err.grpo.context", completion=spec.max_completion_length, max_length=spec.max_length)


def check_rows(spec, rows: list[dict], count) -> list[str]:
    """The data against the rewards and the context: a column a reward reads is in the rows, some prompts
    fit ``max_length - max_completion_length`` (``count``: backend.pipeline.finetune.token_counter's, or None).
    Returns warnings; raises UserError when nothing can run."""
    for r, name in zip(spec.rewards, names(spec.rewards)):
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
