"""The agent job's spec (jobs/agent.py): a Lagent ReAct agent against a live workbench endpoint or an
outside OpenAI-compatible URL, with a Python interpreter that runs in the sandbox (backend/runtime/sandbox.py)."""
from __future__ import annotations

from pathlib import Path

from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.core import url_guard
from backend.pipeline import chat
from backend.runtime import engines, sandbox
from backend.core.errors import UserError

KIND = Kind("agent", "jobs.agent", engine="lagent", cpu_slots=0,
           doc="a Lagent ReAct agent with a limited Python interpreter, against a workbench endpoint or an OpenAI URL")

KEY_SECRET = "OPENAI_API_KEY"      # an outside URL's key: passed as a secret, never in the spec


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = ""                # a live workbench endpoint (Chat page)
    url: str = ""                     # or an OpenAI-compatible base URL (…/v1); its key: the OPENAI_API_KEY secret
    model: str = ""                   # the model id at that URL
    prompt: str = Field(min_length=1, max_length=20000)
    history: list[dict] = []          # earlier turns: [{"role": "user"|"assistant", "content": ...}]
    tools: list[Literal["python"]] = ["python"]
    max_turns: int = Field(6, ge=1, le=20)        # model calls before it must answer
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16, le=4096)
    cpu_s: int = Field(10, ge=1, le=600)          # interpreter limits, per call
    memory_mb: int = Field(1024, ge=64, le=16384)
    wall_s: int = Field(30, ge=1, le=1800)
    output_kb: int = Field(64, ge=1, le=4096)


def target(spec: Spec, home: Path, owner: str) -> dict:
    """The endpoint the agent talks to: a live one from the store, or the outside URL as given."""
    if bool(spec.endpoint) == bool(spec.url):
        raise UserError("err.agent.target")
    if spec.url:
        u = urlparse(spec.url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise UserError("err.spec.url", value=spec.url)
        if not spec.model:
            raise UserError("err.agent.model")
        try:
            url_guard.check_url(spec.url)        # lagent connects by itself: checked here, at submit and at start
        except url_guard.BlockedAddress as e:
            raise UserError("err.url.blocked", url=spec.url, reason=str(e)) from None
        return {"url": spec.url.rstrip("/"), "model": spec.model, "api_key": ""}
    ep = next((e for e in chat.endpoints(home, by=owner) if e["name"] == spec.endpoint), None)
    if ep is None:
        raise UserError("err.agent.no_endpoint", name=spec.endpoint)
    return ep


def check(spec: Spec, home: Path, owner: str) -> dict:
    target(spec, home, owner)
    if not engines.installed("lagent", home=home):
        raise UserError("err.agent.engine_missing")
    why = sandbox.refusal() if "python" in spec.tools else None
    if why is not None and not sandbox.bare_allowed():
        raise why
    return {"cpu_slots": 0}
