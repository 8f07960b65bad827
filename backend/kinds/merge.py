"""The merge job's spec (jobs/merge.py) and its submit-time checks."""
from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.pipeline import finetune as ft
from backend.core.errors import UserError
from backend.core.store import open_store

KIND = Kind("merge", "jobs.merge", doc="merges a LoRA adapter into its base model and registers the result")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str                                      # registry adapter name
    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")   # "" = <adapter>-merged
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"   # auto: the base model's own dtype


def check(spec: Spec, home: Path, owner: str) -> dict:
    """Submit-time checks: the adapter exists and its base model is still registered."""
    entry = open_store(home=home).get("adapter", spec.adapter)
    if entry is None:
        raise UserError("err.spec.no_adapter", name=spec.adapter)
    ft.resolve_model(entry.meta.get("base_model", ""), home=home)
    name = spec.name or f"{spec.adapter}-merged"
    if open_store(home=home).get("model", name):
        raise UserError("err.spec.model_name_taken", name=name)
    return {"gpus": 0, "gpu_mem_gb": 0.0}
