"""Job kinds: which module runs each, in which engine environment, with what resources by default.

A kind has two modules: its spec, ``backend/specs/<kind>.py`` (the pydantic ``Spec``, and optionally
``resources(spec) -> dict`` to ask for more than the defaults, e.g. a GPU memory estimate, and to refuse
what can't run here), which the backend imports to validate; and its job, ``jobs/<kind>.py``
(``main(spec, job)``), which the worker only ever runs as ``python -m <job module>``: the backend never
imports a job. Test-only kinds are added with WORKBENCH_EXTRA_KINDS="name=package.module,..."; such a
module holds its Spec and its main together.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from backend.errors import UserError


@dataclass(frozen=True)
class Kind:
    name: str
    module: str                 # the job module the worker runs
    spec_module: str = ""       # where its Spec lives ("" = backend/specs/<name>.py)
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
    Kind("quantize", "jobs.quantize",
         doc="a 4-bit copy of a model (LMDeploy AWQ W4A16 on GPU, bitsandbytes NF4 anywhere) registered with its lineage"),
    Kind("export", "jobs.export",
         doc="a model as one GGUF file (f16, q8_0, bf16, f32) by llama.cpp's own converter, registered with its lineage"),
    Kind("push", "jobs.push", cpu_slots=0,
         doc="uploads a model, adapter or dataset to Hugging Face or ModelScope with a card carrying its lineage"),
    Kind("agent", "jobs.agent", engine="lagent", cpu_slots=0,
         doc="a Lagent ReAct agent with a limited Python interpreter, against a workbench endpoint or an OpenAI URL"),
    Kind("index", "jobs.index", cpu_slots=0,
         doc="a knowledge base: documents or a dataset's text split into passages and indexed (BM25, jieba for Chinese)"),
    Kind("rag_serve", "jobs.rag_serve", cpu_slots=0, long_lived=True,
         doc="a knowledge base + a model endpoint served as an OpenAI-compatible endpoint that answers with retrieved passages"),
    Kind("rag_eval", "jobs.rag_eval", cpu_slots=0,
         doc="a QA dataset asked of a model alone and through a knowledge-base endpoint: accuracy each way, retrieval hit rate"),
    Kind("lab_check", "jobs.lab_check", cpu_slots=0,
         doc="runs a lab's checks on its owner's artifacts and writes signed evidence when they pass (docs/labs.md)"),
    Kind("vlm", "jobs.vlm", long_lived=True, doc="an image-text model (LLaVA-style, or XComposer with opt-in) loaded once and served as a streaming endpoint"),
]}


class UnknownKind(UserError):
    pass


def _extra() -> dict[str, Kind]:
    out = {}
    for item in filter(None, os.environ.get("WORKBENCH_EXTRA_KINDS", "").split(",")):
        name, _, module = item.partition("=")
        out[name.strip()] = Kind(name.strip(), module.strip(), spec_module=module.strip())
    return out


def get(name: str) -> Kind:
    kind = KINDS.get(name) or _extra().get(name)
    if kind is None:
        raise UnknownKind("err.kind.unknown", name=name, known=", ".join(sorted(KINDS)))
    return kind


def specs(kind: Kind):
    """The module holding the kind's ``Spec`` (and ``resources``)."""
    return importlib.import_module(kind.spec_module or f"backend.specs.{kind.name}")


def asked(kind: Kind, spec) -> dict:
    """Resources a validated spec asks for: the kind's defaults, then the module's own estimate."""
    out = {"cpu_slots": kind.cpu_slots, "gpus": 0, "gpu_mem_gb": 0.0, "engine": kind.engine,
           "timeout_s": 0 if kind.long_lived else None}
    mod = specs(kind)
    if hasattr(mod, "resources"):
        out.update(mod.resources(spec))
    if out["gpus"]:
        out["cpu_slots"] = 0
    return out
