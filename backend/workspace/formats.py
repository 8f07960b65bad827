"""What a training row holds beyond role + content, as the projects that publish data define it:
tool definitions and calls (OpenAI, ms-swift, LLaMA-Factory ShareGPT), media fields, and preference
fields (DPO pairs, KTO labels) that supervised fine-tuning must not train as good answers.

A conversation is a ``Chat``: a list of messages ``{"role", "content", "loss"?, "tool_calls"?,
"tool_call_id"?, "name"?}`` that carries the row's tool definitions in ``.tools`` (None without).
"""
from __future__ import annotations

import json

from backend.core.errors import UserError

MEDIA_FIELDS = ("images", "image", "videos", "video", "audios", "audio")
MEDIA_PARTS = ("image", "image_url", "video", "video_url", "audio", "input_audio")
# roles of other projects → ours; "tool_call" turns become the assistant's tool_calls
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                "model": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                "tool": "tool", "observation": "tool", "tool_response": "tool", "function": "tool",
                "function_call": "tool_call", "tool_call": "tool_call"}


class Chat(list):
    """The messages of one row, with the row's tool definitions (``tools``) if it has any."""

    def __init__(self, messages=(), tools: list | None = None):
        super().__init__(messages)
        self.tools = tools or None


def trained(m: dict) -> bool:
    """A message the fine-tune job learns: an assistant turn (or one flagged ``loss``) with text or tool calls."""
    return bool((m.get("content") or m.get("tool_calls")) and m.get("loss", m.get("role") == "assistant"))


def uses_tools(conv: list[dict]) -> bool:
    return bool(getattr(conv, "tools", None)) or any(m.get("tool_calls") or m["role"] == "tool" for m in conv)


def template_has_tools(template) -> bool:
    """Whether a chat template renders tool definitions and calls (it reads ``tools`` / ``tool_calls``)."""
    return isinstance(template, str) and "tool" in template


def for_template(conv: list[dict]) -> list[dict]:
    """The messages as a chat template reads them (without our ``loss`` flags)."""
    return [{k: v for k, v in m.items() if k != "loss"} for m in conv]


def refusal(record: dict) -> UserError | None:
    """Why a row can't be used for text SFT as it is (media, a preference pair, a KTO 'bad' label), or None."""
    for field in MEDIA_FIELDS:
        if record.get(field):
            return UserError("err.rec.media", field=field)
    for field in ("rejected", "rejected_response", "rejected_messages"):
        if field in record:
            return UserError("err.rec.preference_pair", field=field)
    for field in ("label", "kto_tag"):
        if record.get(field) is False:
            return UserError("err.rec.kto_false", field=field)
    return None


def parse_tools(value, where: str = "tools") -> list | None:
    """Tool definitions given as a list or as a JSON string of one (ms-swift, LLaMA-Factory)."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UserError("err.rec.not_json", where=where) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UserError("err.rec.tools", where=where)
    return value


def tool_call(value, where: str) -> dict:
    """One call as chat templates read it: {"type": "function", "function": {"name", "arguments": {...}}}.
    Takes OpenAI's form (arguments a JSON string) or a bare {"name", "arguments"} (ms-swift, ShareGPT)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UserError("err.rec.tool_call_json", where=where) from None
    fn = value.get("function", value) if isinstance(value, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise UserError("err.rec.tool_call_name", where=where)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise UserError("err.rec.arguments", where=where) from None
    call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(value, dict) and value.get("id"):
        call["id"] = value["id"]
    return call


def media_part(parts: list) -> str | None:
    """The type of the first image/video/audio part of a content list, or None."""
    for p in parts:
        if isinstance(p, dict) and p.get("type") in MEDIA_PARTS:
            return p["type"]
    return None
