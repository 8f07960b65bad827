"""The quantize job's spec (jobs/quantize.py) and its submit-time checks.

Two methods, one per kind of machine:
- ``awq_w4a16``: LMDeploy's AWQ (``lmdeploy lite auto_awq``): 4-bit weights, 16-bit activations, searched
  on a calibration set; TurboMind serves it (serve, engine lmdeploy). CUDA only, lmdeploy engine.
- ``bnb_nf4``: bitsandbytes 4-bit NF4 weights (the QLoRA format, already a core dependency) saved with
  their quantisation config, so the transformers server loads them on the CPU or a GPU unchanged.
"""
from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.runtime import engines
from backend.core.errors import UserError
from backend.runtime.placement import gpus
from backend.kinds.serve import weights_gb
from backend.core.store import open_store

KIND = Kind("quantize", "jobs.quantize",
           doc="a 4-bit copy of a model (LMDeploy AWQ W4A16 on GPU, bitsandbytes NF4 anywhere) registered with its lineage")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str                                        # registry model name
    method: Literal["awq_w4a16", "bnb_nf4"] = "bnb_nf4"
    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")   # "" = <model>-<method>
    calib_dataset: Literal["wikitext2", "c4", "ptb", "pileval"] = "wikitext2"   # awq: calibration set
    calib_samples: int = Field(128, ge=1, le=4096)    # awq: calibration samples
    calib_seqlen: int = Field(2048, ge=64, le=32768)  # awq: tokens per calibration sample
    group_size: Literal[32, 64, 128, 256] = 128       # awq: weights sharing one scale


def out_name(spec: Spec) -> str:
    return spec.name or f"{spec.model}-{spec.method.replace('_', '-')}"


def check(spec: Spec, home: Path, owner: str) -> dict:
    """The model exists and the name is free; AWQ needs a CUDA GPU and the lmdeploy engine."""
    model = open_store(home=home).get("model", spec.model)
    if model is None:
        raise UserError("err.quantize.no_model", name=spec.model)
    if open_store(home=home).get("model", out_name(spec)):
        raise UserError("err.quantize.name_taken", name=out_name(spec))
    if spec.method == "bnb_nf4":
        return {}
    if not gpus():
        raise UserError("err.quantize.awq_needs_gpu")
    if not engines.installed("lmdeploy", home=home):
        raise UserError("err.serve.lmdeploy_missing")
    return {"engine": "lmdeploy", "gpus": 1, "gpu_mem_gb": round(weights_gb(model.path) * 1.5 + 2, 1)}
