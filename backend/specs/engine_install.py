"""The engine_install job's spec (jobs/engine_install.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from backend.engines import ENGINES


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    extra_requirements: list[str] = []        # added to the engine's own list
    reinstall: bool = False

    @field_validator("engine")
    @classmethod
    def known(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; engines: {', '.join(sorted(ENGINES))}")
        return v

    @field_validator("extra_requirements")
    @classmethod
    def plain(cls, v: list[str]) -> list[str]:
        for req in v:
            if not req or req.startswith("-") or any(c in req for c in " ;|&`$"):
                raise ValueError(f"{req!r} is not a plain requirement (name and version only)")
        return v
