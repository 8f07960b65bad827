"""Job kinds: which module runs each, in which engine environment, with what resources by default.

A kind's module lives in ``jobs/`` and defines ``Spec`` (pydantic) and ``main(spec, job)``; it may
define ``resources(spec) -> dict`` to ask for more than the defaults (for example a GPU memory
estimate). Test-only kinds are added with WORKBENCH_EXTRA_KINDS="name=package.module,...".
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    module: str
    engine: str = "core"        # which virtual environment's python runs it (backend/engines.py)
    cpu_slots: int = 1          # 1 = a heavy job (holds a CPU slot when it has no GPU); 0 = light
    long_lived: bool = False    # a server: no default timeout, ends only when stopped
    doc: str = ""


KINDS = {k.name: k for k in [
    Kind("engine_install", "jobs.engine_install", cpu_slots=0,
         doc="creates an engine's virtual environment with live pip output"),
    Kind("download", "jobs.download", cpu_slots=0,
         doc="fetches a model from Hugging Face, ModelScope or OpenXLab (or the bundled one) and registers it"),
    Kind("serve", "jobs.serve", long_lived=True,
         doc="an OpenAI-compatible model server (transformers serve, or lmdeploy on GPU) registered as an endpoint"),
    Kind("evaluate", "jobs.evaluate", engine="opencompass",
         doc="OpenCompass evaluation of models x datasets: results table, per-item predictions"),
    Kind("dataset_import", "jobs.dataset_import", cpu_slots=0,
         doc="imports a dataset from Hugging Face, ModelScope or a URL into the workspace"),
    Kind("dataset_stats", "jobs.dataset_stats", cpu_slots=0,
         doc="rows, fields, duplicates, languages and a token-length histogram of a dataset"),
    Kind("finetune", "jobs.finetune", doc="LoRA / QLoRA / full fine-tune of a chat model (transformers + peft)"),
    Kind("merge", "jobs.merge", doc="merges a LoRA adapter into its base model and registers the result"),
    Kind("vlm", "jobs.vlm", long_lived=True, doc="an image-text model (LLaVA-style, or XComposer with opt-in) loaded once and served as a streaming endpoint"),
]}


class UnknownKind(ValueError):
    pass


def _extra() -> dict[str, Kind]:
    out = {}
    for item in filter(None, os.environ.get("WORKBENCH_EXTRA_KINDS", "").split(",")):
        name, _, module = item.partition("=")
        out[name.strip()] = Kind(name.strip(), module.strip())
    return out


def get(name: str) -> Kind:
    kind = KINDS.get(name) or _extra().get(name)
    if kind is None:
        raise UnknownKind(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
    return kind


def module(kind: Kind):
    return importlib.import_module(kind.module)


def asked(kind: Kind, spec) -> dict:
    """Resources a validated spec asks for: the kind's defaults, then the module's own estimate."""
    out = {"cpu_slots": kind.cpu_slots, "gpus": 0, "gpu_mem_gb": 0.0, "engine": kind.engine,
           "timeout_s": 0 if kind.long_lived else None}
    mod = module(kind)
    if hasattr(mod, "resources"):
        out.update(mod.resources(spec))
    if out["gpus"]:
        out["cpu_slots"] = 0
    return out
