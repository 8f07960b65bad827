"""The export job's spec (jobs/export.py) and its submit-time checks: a registry model (a transformers
folder: downloaded, merged or fully fine-tuned) written as one GGUF file by llama.cpp's converter."""
from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.core.errors import UserError
from backend.core.store import open_store

KIND = Kind("export", "jobs.export",
           doc="a model as one GGUF file (f16, q8_0, bf16, f32) by llama.cpp's own converter, registered with its lineage")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str                                        # registry model name
    outtype: Literal["f16", "q8_0", "bf16", "f32"] = "f16"   # backend.pipeline.export.OUTTYPES
    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")   # "" = <model>-<outtype>-gguf


def out_name(spec: Spec) -> str:
    return spec.name or f"{spec.model}-{spec.outtype}-gguf"


def check(spec: Spec, home: Path, owner: str) -> dict:
    """The model exists as a transformers folder (not a GGUF already) and the name is free."""
    model = open_store(home=home).get("model", spec.model)
    if model is None:
        raise UserError("err.quantize.no_model", name=spec.model)
    if model.meta.get("format") == "gguf":
        raise UserError("err.export.already_gguf", name=spec.model)
    if open_store(home=home).get("model", out_name(spec)):
        raise UserError("err.quantize.name_taken", name=out_name(spec))
    return {}
