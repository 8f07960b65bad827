"""The serve job's spec (jobs/serve.py): what to serve on which engine, the registry entries it
resolves to, and the resources it asks for (checked at submit time and again in the job)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.kinds import Kind
from backend.runtime import engines
from backend.core.errors import UserError
from backend.runtime.placement import gpus
from backend.core.registry import Entry
from backend.core.store import open_store

KIND = Kind("serve", "jobs.serve", long_lived=True,
           doc="an OpenAI-compatible model server (transformers serve, or lmdeploy on GPU) registered as an endpoint")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = ""                       # registry model name; may be empty when the adapter names its base
    adapter: str = ""                     # registry adapter name: merged into a copy of the model in the job folder
    engine: Literal["transformers", "lmdeploy"] = "transformers"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    name: str = Field("", max_length=120)  # endpoint name; default "<model>[+<adapter>] #<job id>"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    continuous_batching: bool = False     # transformers: batch concurrent requests (sampling settings are shared)
    cb_blocks: int = Field(0, ge=0)       # transformers CB: KV cache blocks of 32 tokens; 0 = sized from free memory
    cb_memory_share: float = Field(0.1, gt=0, le=0.9)   # transformers CB: share of the memory free at start for it
    cache_max_entry_count: float = Field(0.5, gt=0, le=0.95)   # lmdeploy: share of free GPU memory for KV cache
    kv_quant: Literal["none", "int8", "int4"] = "none"   # lmdeploy: KV-cache quantisation (--quant-policy 0/8/4)
    ready_timeout_s: float = Field(900, gt=0)


# -- resolving registry entries (used at submit time by resources() and again in the job) -------------
def resolve(spec: Spec, home: Path) -> tuple[Entry, Entry | None]:
    """(model entry, adapter entry or None) from the registry; ValueError with a readable reason."""
    store = open_store(home)
    adapter = None
    model_name = spec.model
    if spec.adapter:
        adapter = store.get("adapter", spec.adapter)
        if adapter is None:
            raise UserError("err.spec.no_adapter", name=spec.adapter)
        model_name = model_name or adapter.meta.get("base_model", "")
    if not model_name:
        raise UserError("err.serve.no_model")
    model = store.get("model", model_name)
    if model is None:
        raise UserError("err.spec.no_model", name=model_name)
    if adapter and (model.meta or {}).get("format") == "gguf":
        raise UserError("err.serve.gguf_adapter", name=model.name)
    for entry in filter(None, (model, adapter)):
        if not Path(entry.path).is_dir():
            raise UserError("err.spec.folder_missing", type=entry.type, name=entry.name, path=entry.path)
    return model, adapter


def weights_gb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**30 or \
        sum(f.stat().st_size for f in Path(path).glob("*.bin")) / 2**30


QUANT_POLICY = {"none": 0, "int8": 8, "int4": 4}


def kv_budget(spec: Spec, device: str, free: int, total: int) -> tuple[float, int]:
    """Continuous batching's KV-cache budget from the memory really free when the server starts: (the
    ``--cb-max-memory-percent`` to pass, the budget in bytes). transformers sizes the cache (its blocks,
    the batch's activations and masks) to fit ``percent`` of, on CUDA, the memory free once the weights are
    loaded, and on the CPU, total RAM less its own process; left to its default (60% of total RAM) it
    asked more than the free RAM of a shared machine and died at the first request."""
    budget = int(spec.cb_memory_share * free)
    percent = spec.cb_memory_share if device == "cuda" else budget / max(total, 1)
    return round(max(percent, 1e-4), 4), budget


def check(spec: Spec, home: Path, owner: str) -> dict:
    """CPU: one heavy slot. GPU: one GPU and a memory estimate. LMDeploy needs CUDA: refuse without it."""
    model, _ = resolve(spec, home=home)
    gpu_list = gpus() if spec.device != "cpu" else []
    if spec.engine == "lmdeploy":
        if not gpu_list:
            raise UserError("err.serve.lmdeploy_gpu")
        if spec.device == "cpu":
            raise UserError("err.serve.lmdeploy_cpu")
        if not engines.installed("lmdeploy", home=home):
            raise UserError("err.serve.lmdeploy_missing")
    lmdeploy_only = [f for f in ("kv_quant",) if getattr(spec, f) != Spec.model_fields[f].default]
    if lmdeploy_only and spec.engine != "lmdeploy":
        raise UserError("err.serve.lmdeploy_only", fields=", ".join(lmdeploy_only))
    if spec.device == "cuda" and not gpu_list:
        raise UserError("err.spec.no_cuda")
    if not gpu_list:
        return {"cpu_slots": 1}
    w = weights_gb(model.path)
    if spec.engine == "lmdeploy":
        total = max(g.total_gb for g in gpu_list)
        mem = w + spec.cache_max_entry_count * max(total - w, 0)
    else:                           # with an adapter: the merged copy and the base, both loaded
        mem = w * 1.2 * (2 if spec.adapter else 1) + 1.0
        if spec.continuous_batching:    # its KV budget: a share of what is free once loaded (kv_budget)
            mem += spec.cb_memory_share * max(max(g.total_gb for g in gpu_list) - mem, 0)
    return {"gpus": 1, "gpu_mem_gb": round(mem, 1)}
