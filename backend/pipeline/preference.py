"""Preference data as the projects that publish it define it, read into TRL's conversational form:
pairs ``{"prompt": [messages], "chosen": [message], "rejected": [message]}`` for DPO/ORPO, and
labelled rows ``{"prompt", "completion": [message], "label": bool}`` for KTO.

Read: TRL's ``{"prompt", "chosen", "rejected"}`` / ``{"prompt", "completion", "label"}`` (strings or
messages); LLaMA-Factory's ranking rows (alpaca ``{"instruction", "input", "chosen", "rejected"}``,
ShareGPT ``{"conversations", "chosen": {"from", "value"}, "rejected": {...}}``) and KTO rows
(``kto_tag``) and v1's ``{"chosen_messages", "rejected_messages"}``; ms-swift's ``{"messages", "rejected_response"}``
and ``{"messages", "label"}``.
"""
from __future__ import annotations

from pathlib import Path

from backend.workspace import datasets
from backend.core.errors import UserError

PAIR_OBJECTIVES = ("dpo", "orpo")
OBJECTIVES = PAIR_OBJECTIVES + ("kto",)
FIELDS = ("chosen", "rejected", "rejected_response", "label", "kto_tag", "chosen_messages", "rejected_messages")


def _as_messages(value, role: str, where: str) -> list[dict]:
    """A string (one message of ``role``) or a list of messages."""
    if not isinstance(value, list):
        return [{"role": role, "content": datasets._text(value, where)}]
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise UserError("err.pref.not_object", where=where, i=i)
        datasets._turn(out, m.get("role"), m.get("content"), f"{where}[{i}]", m)
    return out


def _answered(base: dict, answer) -> list[dict]:
    """The messages of ``base`` (a preference row without its preference fields) ending with ``answer``."""
    if "conversations" in base:
        turn = answer if isinstance(answer, dict) else {"from": "gpt", "value": answer}
        return datasets.to_messages({**base, "conversations": base["conversations"] + [turn]}, "sharegpt")
    if "messages" in base:
        turn = answer if isinstance(answer, dict) else {"role": "assistant", "content": answer}
        return datasets.to_messages({**base, "messages": base["messages"] + [turn]}, "messages")
    return datasets.to_messages({**base, "output": answer}, "alpaca")


def to_preference(rec: dict) -> dict:
    """One row as a TRL pair or labelled row; ValueError saying what is missing."""
    if not isinstance(rec, dict):
        raise UserError("err.rec.not_object", type=type(rec).__name__)
    base = {k: v for k, v in rec.items() if k not in FIELDS}
    if "prompt" in rec:                                   # TRL
        prompt = _as_messages(rec["prompt"], "user", "prompt")
        if "completion" in rec:
            return {"prompt": prompt, "completion": _as_messages(rec["completion"], "assistant", "completion"),
                    "label": _label(rec.get("label"))}
        if "chosen" not in rec or "rejected" not in rec:
            raise UserError("err.pref.prompt_row")
        return {"prompt": prompt, "chosen": _as_messages(rec["chosen"], "assistant", "chosen"),
                "rejected": _as_messages(rec["rejected"], "assistant", "rejected")}
    if "chosen_messages" in rec and "rejected_messages" in rec:     # LLaMA-Factory v1: two whole conversations
        chosen = datasets.to_messages({"messages": rec["chosen_messages"]}, "messages")
        rejected = datasets.to_messages({"messages": rec["rejected_messages"]}, "messages")
        if list(chosen[:-1]) != list(rejected[:-1]):
            raise UserError("err.pref.v1_prompts")
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    if "rejected_response" in rec:                        # ms-swift
        msgs = datasets.to_messages(base, datasets.record_format(base))
        return {"prompt": msgs[:-1], "chosen": msgs[-1:],
                "rejected": [{"role": "assistant", "content": datasets._text(rec["rejected_response"], "rejected_response")}]}
    if "chosen" in rec and "rejected" in rec:             # LLaMA-Factory ranking rows
        chosen, rejected = _answered(base, rec["chosen"]), _answered(base, rec["rejected"])
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    if "label" in rec or "kto_tag" in rec:                # KTO: ms-swift label, LLaMA-Factory kto_tag
        msgs = datasets.to_messages(base, datasets.record_format(base))
        return {"prompt": msgs[:-1], "completion": msgs[-1:], "label": _label(rec.get("label", rec.get("kto_tag")))}
    raise UserError("err.pref.not_preference")


def _label(value) -> bool:
    if not isinstance(value, bool):
        raise UserError("err.pref.label", value=value)
    return value


def load_preferences(path: str | Path, objective: str, limit: int | None = None) -> list[dict]:
    """Every row of a preference file for ``objective``: pairs for DPO/ORPO; for KTO labelled rows
    (a pair gives one good and one bad row). Raises DatasetError naming the first bad line."""
    rows = datasets._read_all(path, to_preference, limit)
    if objective in PAIR_OBJECTIVES:
        if any("label" in r for r in rows):
            raise datasets.DatasetError("err.pref.kto_rows", name=Path(path).name, objective=objective.upper())
        return rows
    out = []
    for r in rows:
        if "label" in r:
            out.append(r)
        else:
            out += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                    {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    return out
