"""The vlm job's spec (jobs/vlm.py): which image-text model, what it is (XComposer or a standard
image-text-to-text model), and the resources it asks for (checked at submit time and again in the job)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.workspace import remote_code
from backend.kinds import Kind
from backend.core.errors import UserError
from backend.runtime.placement import gpus
from backend.core.store import open_store

KIND = Kind("vlm", "jobs.vlm", long_lived=True, doc="an image-text model (LLaVA-style, or XComposer with opt-in) loaded once and served as a streaming endpoint")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = ""                        # registry model name
    path: str = ""                         # or a model folder (no trust_remote_code opt-in possible then)
    adapter: str = ""                      # or a registered image-text adapter: its base model served with it
    name: str = Field("", max_length=120)  # endpoint name; default "<model> #<job id>"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_images: int = Field(4, ge=1, le=32)
    max_new_tokens_limit: int = Field(2048, ge=1)
    ready_timeout_s: float = Field(900, gt=0)


# -- what the model is (used at submit time by resources() and again in the job) ---------------------
def is_xcomposer(config: dict, name: str) -> bool:
    return "xcomposer" in (str(config.get("model_type", "")) + " ".join(config.get("architectures") or []) + name).lower()


def image_text(config: dict, name: str) -> bool:
    """An image-text model: XComposer, or a config with a vision tower (LLaVA, Qwen2-VL, InternVL...)."""
    return is_xcomposer(config, name) or "vision_config" in config or "vision_tower" in config


def resolve(spec: Spec, home: Path) -> dict:
    """{"name", "path", "meta", "config", "xcomposer", "adapter"}; ValueError with a readable reason. An
    adapter (a fine-tune's, ``modality: image_text``) names its base model by its lineage."""
    if spec.model and spec.path:
        raise UserError("err.vlm.model_or_folder")
    if spec.adapter:
        adapter = open_store(home).get("adapter", spec.adapter)
        if adapter is None:
            raise UserError("err.vlm.no_adapter", name=spec.adapter)
        base = (adapter.meta or {}).get("base_model", "")
        if spec.path or (spec.model and spec.model != base):
            raise UserError("err.vlm.adapter_base", name=spec.adapter, base=base)
        m = resolve(Spec(**{**spec.model_dump(), "adapter": "", "model": base}), home)
        if m["xcomposer"]:
            raise UserError("err.vlm.adapter_base", name=spec.adapter, base=base)
        return {**m, "name": spec.adapter, "base": m["name"], "adapter": Path(adapter.path)}
    if spec.model:
        entry = open_store(home).get("model", spec.model)
        if entry is None:
            raise UserError("err.spec.no_model", name=spec.model)
        name, path, meta = entry.name, Path(entry.path), entry.meta or {}
    elif spec.path:
        name, path, meta = Path(spec.path).name, Path(spec.path), {}
    else:
        raise UserError("err.vlm.no_model")
    if not path.is_dir():
        raise UserError("err.spec.folder_missing", type="model", name=name, path=path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError("err.vlm.no_config", name=name, path=path) from None
    model_type = str(config.get("model_type", ""))
    xcomposer = is_xcomposer(config, name)
    if xcomposer:
        if not remote_code.allowed(path, home):
            raise UserError("err.vlm.xcomposer_trust", name=name)
    elif not image_text(config, name):
        raise UserError("err.vlm.not_image_text", name=name, model_type=model_type or '?')
    return {"name": name, "path": path, "meta": meta, "config": config, "xcomposer": xcomposer, "adapter": None}


def weights_gb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**30 or \
        sum(f.stat().st_size for f in Path(path).glob("*.bin")) / 2**30


def is_7b(m: dict) -> bool:
    return "7b" in m["name"].lower() or "7b" in m["path"].name.lower() or weights_gb(m["path"]) > 8


def check(spec: Spec, home: Path, owner: str) -> dict:
    m = resolve(spec, home=home)
    gpu_list = gpus() if spec.device != "cpu" else []
    if spec.device == "cuda" and not gpu_list:
        raise UserError("err.spec.no_cuda")
    if not gpu_list:
        if m["xcomposer"] and is_7b(m):
            raise UserError("err.vlm.xcomposer_7b", name=m['name'])
        return {"cpu_slots": 1}
    return {"gpus": 1, "gpu_mem_gb": round(weights_gb(m["path"]) * 1.2 + 1.5, 1)}
