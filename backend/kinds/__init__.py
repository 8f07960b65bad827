"""Job kinds, one module each: ``backend/kinds/<kind>.py`` declares ``KIND`` (its job module, engine, defaults),
its pydantic ``Spec`` (every field and default, written once) and, where the kind needs one, its submit-time
check ``check(spec, home, owner) -> dict`` (refuses what can't run here; may ask for more than the defaults,
e.g. a GPU memory estimate). The backend validates with these before a job is queued
(``backend/kinds/catalog.py``); the job module (``jobs/<kind>.py``, ``main(spec, job)``) reads the same Spec and
is only ever run by the worker as ``python -m jobs.<kind>``. A kind module imports only what its check needs,
never a module that submits jobs, so the catalog, the queue and the areas form no circle.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    module: str                 # the job module the worker runs
    spec_module: str = ""       # where its Spec lives ("" = backend/kinds/<name>.py)
    engine: str = "core"        # which virtual environment's python runs it (backend/runtime/engines.py)
    cpu_slots: int = 1          # 1 = a heavy job (holds a CPU slot when it has no GPU); 0 = light
    long_lived: bool = False    # a server: no default timeout, ends only when stopped
    doc: str = ""
