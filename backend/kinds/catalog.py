"""Every job kind, from its own module (``backend/kinds/<kind>.py``): look one up, and what a spec asks for.

Test-only kinds are added with WORKBENCH_EXTRA_KINDS="name=package.module,..."; such a module holds its Spec
and its main together (tests/fixtures).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from backend.core.errors import UserError
from backend.kinds import (Kind, agent, dataset_import, dataset_stats, download, engine_install, evaluate, export,
                           finetune, index, lab_check, merge, push, quantize, rag_eval, rag_serve, serve, vlm)

MODULES: tuple[ModuleType, ...] = (engine_install, download, serve, evaluate, dataset_import, dataset_stats, finetune,
                                   merge, quantize, export, push, agent, index, rag_serve, rag_eval, lab_check, vlm)
KINDS: dict[str, Kind] = {m.KIND.name: m.KIND for m in MODULES}


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


def module(kind: Kind) -> ModuleType:
    """The module holding the kind's ``Spec`` (and ``check``)."""
    if kind.name in KINDS:
        return next(m for m in MODULES if m.KIND is kind)
    return importlib.import_module(kind.spec_module)        # a test kind (WORKBENCH_EXTRA_KINDS)


def asked(kind: Kind, spec, home: Path, owner: str) -> dict:
    """Resources a validated spec asks for: the kind's defaults, then the module's own check and estimate."""
    out = {"cpu_slots": kind.cpu_slots, "gpus": 0, "gpu_mem_gb": 0.0, "engine": kind.engine,
           "timeout_s": 0 if kind.long_lived else None}
    mod = module(kind)
    if hasattr(mod, "check"):
        out.update(mod.check(spec, home, owner))
    if out["gpus"]:
        out["cpu_slots"] = 0
    return out
