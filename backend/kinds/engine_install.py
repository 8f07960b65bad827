"""The engine_install job's spec (jobs/engine_install.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from backend.kinds import Kind
from backend.runtime.engines import ENGINES
from backend.core.errors import UserError

KIND = Kind("engine_install", "jobs.engine_install", cpu_slots=0,
           doc="creates an engine's virtual environment with live pip output")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    extra_requirements: list[str] = []        # added to the engine's own list
    reinstall: bool = False

    @field_validator("engine")
    @classmethod
    def known(cls, v: str) -> str:
        if v not in ENGINES:
            raise UserError("err.spec.engine", value=v, engines=", ".join(sorted(ENGINES)))
        return v

    @field_validator("extra_requirements")
    @classmethod
    def plain(cls, v: list[str]) -> list[str]:
        for req in v:
            if not req or req.startswith("-") or any(c in req for c in " ;|&`$"):
                raise UserError("err.spec.requirement", value=req)
        return v
