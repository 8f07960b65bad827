"""The push job's spec (jobs/push.py): which registry entry goes to which hub repository. The token is not
here: it is the job's secret (queue.submit(..., secrets={"HF_TOKEN" or "MODELSCOPE_API_TOKEN": ...}))."""
from __future__ import annotations

from pathlib import Path

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from backend.kinds import Kind
from backend.core.errors import UserError
from backend.kinds.download import REPO_RE
from backend.core.store import open_store

KIND = Kind("push", "jobs.push", cpu_slots=0,
           doc="uploads a model, adapter or dataset to Hugging Face or ModelScope with a card carrying its lineage")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["model", "adapter", "dataset"] = "model"
    source: str                          # its registry name
    repo_id: str                         # owner/name on the hub
    private: bool = True
    hub: Literal["huggingface", "modelscope"] = "huggingface"
    endpoint: str = ""                   # "" = $HF_ENDPOINT / $MODELSCOPE_DOMAIN or the hub itself
    message: str = "Upload from Lab Workbench"

    @field_validator("repo_id")
    @classmethod
    def repo_ok(cls, v: str) -> str:
        if not REPO_RE.fullmatch(v.strip()):
            raise UserError("err.spec.repo_id", value=v)
        return v.strip()

    @field_validator("endpoint")
    @classmethod
    def endpoint_ok(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", v.strip()):
            raise UserError("err.spec.url", value=v)
        return v.strip().rstrip("/")


def uses(spec: Spec) -> list[tuple[str, str]]:
    """The entry the job reads, which its owner must be allowed to use (queue.check_uses)."""
    return [(spec.type, spec.source)]


def check(spec: Spec, home: Path, owner: str) -> dict:
    if open_store(home=home).get(spec.type, spec.source) is None:
        raise UserError("err.push.no_entry", type=spec.type, name=spec.source)
    return {"cpu_slots": 0}
